//! Shortest round-trip decimal digits of an `f64`, chosen exactly as Python's `repr(float)`
//! chooses them (David Gay's `dtoa` in mode 0, as CPython builds it: no `ROUND_BIASED`).
//!
//! For a finite, non-zero `v = f * 2^e`, every real in the rounding interval
//! `[v - m-, v + m+]` reads back as `v` (`m+` is half the gap to the next float, `m-` half
//! the gap to the previous one: a quarter when `v` is the lowest float of a binade). The
//! ends belong to the interval when `f` is even (a read-back tie goes to even). We want the
//! fewest decimal digits that land in the interval; when two such strings exist with the
//! same number of digits, the one nearer to `v`; and when both are exactly as near, the
//! one whose last digit is even.
//!
//! That last rule is where Rust's own formatter (`{}` / `{:e}`, Grisu with a Dragon4
//! fallback) differs: at an exact tie it rounds the last digit *up*. Ties are real, e.g.
//! `2^49 + 0.25 = 562949953421312.25`: both `.2` and `.3` read back as that float, each is
//! 0.05 away; Python writes `562949953421312.2`, Rust `562949953421312.3`.
//!
//! The method is exact integer arithmetic (the free-format digit generation of Steele &
//! White, with Burger & Dybvig's termination tests): keep the remainder `r`, the scale `s`
//! and the interval half-widths `m+`, `m-` as integers so that, after each digit,
//! `r / s` is the part of `v` the digits so far do not cover (in units of the last
//! digit). Stop at the first digit where the truncated string (`r <= m-`) or the string
//! rounded up (`r + m+ >= s`) lies inside the interval, and pick between them by comparing
//! `2r` with `s`. For everyday magnitudes (about 1e-21 .. 1e36) the integers fit in a
//! `u128`; beyond, they reach about 1100 bits (tiny subnormals, huge exponents) and a
//! fixed-size bignum on the stack holds them. The same generic code runs on both.

use std::cmp::Ordering;

/// 64-bit limbs: enough for 1280 bits; the largest value used is below 2^1090.
const LIMBS: usize = 20;

#[derive(Clone, Copy)]
struct Big {
    len: usize,
    limbs: [u64; LIMBS],
    /// Set if a result needed more than [`LIMBS`] limbs (never, for f64 inputs).
    overflow: bool,
}

impl Big {
    fn from_u64(v: u64) -> Big {
        let mut b = Big {
            len: 0,
            limbs: [0; LIMBS],
            overflow: false,
        };
        if v != 0 {
            b.limbs[0] = v;
            b.len = 1;
        }
        b
    }

    fn push(&mut self, limb: u64) {
        match self.limbs.get_mut(self.len) {
            Some(slot) => {
                *slot = limb;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }

    fn trim(&mut self) {
        while self.len > 0 && self.limbs[self.len - 1] == 0 {
            self.len -= 1;
        }
    }

    fn mul_small(&mut self, k: u64) {
        let mut carry: u64 = 0;
        for limb in self.limbs.iter_mut().take(self.len) {
            let t = u128::from(*limb) * u128::from(k) + u128::from(carry);
            *limb = t as u64;
            carry = (t >> 64) as u64;
        }
        if carry != 0 {
            self.push(carry);
        }
    }

    fn shl(&mut self, bits: u32) {
        if self.len == 0 {
            return;
        }
        let words = (bits / 64) as usize;
        let bits = bits % 64;
        if bits != 0 {
            let mut carry = 0u64;
            for limb in self.limbs.iter_mut().take(self.len) {
                let next = *limb >> (64 - bits);
                *limb = (*limb << bits) | carry;
                carry = next;
            }
            if carry != 0 {
                self.push(carry);
            }
        }
        if words > 0 {
            if self.len + words > LIMBS {
                self.overflow = true;
                return;
            }
            self.limbs.copy_within(0..self.len, words);
            self.limbs[..words].fill(0);
            self.len += words;
        }
    }

    /// Multiply by `5^n`.
    fn mul_pow5(&mut self, n: u32) {
        // 5^27 is the largest power of five below 2^64.
        const FIVE_27: u64 = 7_450_580_596_923_828_125;
        let mut left = n;
        while left >= 27 {
            self.mul_small(FIVE_27);
            left -= 27;
        }
        if left > 0 {
            self.mul_small(5u64.pow(left));
        }
    }

    fn cmp(&self, other: &Big) -> Ordering {
        if self.len != other.len {
            return self.len.cmp(&other.len);
        }
        for i in (0..self.len).rev() {
            match self.limbs[i].cmp(&other.limbs[i]) {
                Ordering::Equal => continue,
                unequal => return unequal,
            }
        }
        Ordering::Equal
    }

    /// `(self + other).cmp(target)`, in one pass and without a temporary.
    fn sum_cmp(&self, other: &Big, target: &Big) -> Ordering {
        // Usually the leading limbs decide: read all three at the scale of the target's top
        // two limbs (what is dropped below is under 1 unit each; float rounding is relative)
        // and answer when the sums differ by more than that error could explain.
        if target.len >= 2 {
            let from = target.len - 2;
            let sum = self.approx(from) + other.approx(from);
            let t = target.approx(from);
            let slack = 4.0 + (sum + t) * 1e-12;
            if sum + slack < t {
                return Ordering::Less;
            }
            if sum > t + slack {
                return Ordering::Greater;
            }
        }
        let n = self.len.max(other.len).max(target.len);
        let mut ord = Ordering::Equal;
        let mut carry = false;
        for i in 0..n {
            let a = if i < self.len { self.limbs[i] } else { 0 };
            let b = if i < other.len { other.limbs[i] } else { 0 };
            let t = if i < target.len { target.limbs[i] } else { 0 };
            let (s1, c1) = a.overflowing_add(b);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            carry = c1 || c2;
            // A higher limb that differs decides; so the last difference seen wins.
            if s2 != t {
                ord = s2.cmp(&t);
            }
        }
        if carry {
            Ordering::Greater
        } else {
            ord
        }
    }

    /// `self -= k * other`; the caller guarantees the result is not negative.
    fn sub_mul(&mut self, other: &Big, k: u64) {
        let mut carry: u64 = 0; // of the product
        let mut borrow = false;
        for i in 0..self.len {
            let p = if i < other.len {
                u128::from(other.limbs[i]) * u128::from(k) + u128::from(carry)
            } else {
                u128::from(carry)
            };
            carry = (p >> 64) as u64;
            let (d1, b1) = self.limbs[i].overflowing_sub(p as u64);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            self.limbs[i] = d2;
            borrow = b1 || b2;
        }
        self.trim();
    }

    /// The value of the limbs from `from` up, as a float (at most three limbs are read:
    /// enough for a quotient estimate good to about 2^-52).
    fn approx(&self, from: usize) -> f64 {
        let mut x = 0.0f64;
        for i in (from..self.len).rev() {
            x = x * 18_446_744_073_709_551_616.0 + self.limbs[i] as f64;
        }
        x
    }

    /// Quotient digit of `self / s` (which is below 10) and `self %= s`.
    fn div_digit(&mut self, s: &Big) -> u64 {
        if self.cmp(s) == Ordering::Less {
            return 0;
        }
        // Estimate from the leading limbs (both read at the same scale). Away from an
        // integer the estimate's floor is the digit; near one, start one lower (so the
        // subtraction cannot go negative) and correct upwards.
        let drop = s.len.saturating_sub(2);
        let est = self.approx(drop) / s.approx(drop);
        let fl = est.floor();
        let mut q = if est - fl > 1e-6 && est - fl < 1.0 - 1e-6 {
            fl as u64
        } else {
            (fl as u64).saturating_sub(1)
        }
        .min(9);
        if q > 0 {
            self.sub_mul(s, q);
        }
        while self.cmp(s) != Ordering::Less && q < 10 {
            self.sub_mul(s, 1);
            q += 1;
        }
        q
    }
}

/// The integer operations the digit generation needs, for two widths: `u128` for ordinary
/// magnitudes (about 1e-21 .. 1e36, the fast path) and [`Big`] for the rest. The same
/// generic code runs on both, so they cannot disagree.
trait Nat: Copy {
    fn from_u64(v: u64) -> Self;
    fn shl(&mut self, bits: u32);
    fn mul_small(&mut self, k: u64);
    fn mul_pow5(&mut self, n: u32);
    fn cmp(&self, other: &Self) -> Ordering;
    /// `(self + other).cmp(target)`; `None` if the sum does not fit.
    fn sum_cmp(&self, other: &Self, target: &Self) -> Option<Ordering>;
    /// Quotient digit of `self / s` (below 10) and `self %= s`.
    fn div_digit(&mut self, s: &Self) -> u64;
    /// Whether some result did not fit (the caller then retries with a wider type).
    fn overflowed(&self) -> bool;
}

impl Nat for Big {
    fn from_u64(v: u64) -> Self {
        Big::from_u64(v)
    }
    fn shl(&mut self, bits: u32) {
        Big::shl(self, bits)
    }
    fn mul_small(&mut self, k: u64) {
        Big::mul_small(self, k)
    }
    fn mul_pow5(&mut self, n: u32) {
        Big::mul_pow5(self, n)
    }
    fn cmp(&self, other: &Self) -> Ordering {
        Big::cmp(self, other)
    }
    fn sum_cmp(&self, other: &Self, target: &Self) -> Option<Ordering> {
        Some(Big::sum_cmp(self, other, target))
    }
    fn div_digit(&mut self, s: &Self) -> u64 {
        Big::div_digit(self, s)
    }
    fn overflowed(&self) -> bool {
        self.overflow
    }
}

/// A `u128` that remembers whether an operation overflowed.
#[derive(Clone, Copy)]
struct Wide {
    v: u128,
    overflow: bool,
}

impl Wide {
    fn set(&mut self, r: Option<u128>) {
        match r {
            Some(v) => self.v = v,
            None => self.overflow = true,
        }
    }
}

impl Nat for Wide {
    fn from_u64(v: u64) -> Self {
        Wide {
            v: u128::from(v),
            overflow: false,
        }
    }
    fn shl(&mut self, bits: u32) {
        if bits >= 128 || (self.v != 0 && self.v.leading_zeros() < bits) {
            self.overflow = true;
        } else {
            self.v <<= bits;
        }
    }
    fn mul_small(&mut self, k: u64) {
        self.set(self.v.checked_mul(u128::from(k)));
    }
    fn mul_pow5(&mut self, n: u32) {
        self.set(5u128.checked_pow(n).and_then(|p| self.v.checked_mul(p)));
    }
    fn cmp(&self, other: &Self) -> Ordering {
        self.v.cmp(&other.v)
    }
    fn sum_cmp(&self, other: &Self, target: &Self) -> Option<Ordering> {
        Some(self.v.checked_add(other.v)?.cmp(&target.v))
    }
    fn div_digit(&mut self, s: &Self) -> u64 {
        if s.v == 0 {
            self.overflow = true;
            return 0;
        }
        // The quotient is below 10: a float estimate (good to ~2^-52) and a small
        // correction beat a 128-bit division.
        let est = self.v as f64 / s.v as f64;
        let mut q = (est as u128).saturating_sub(1).min(9);
        self.v -= q * s.v;
        while self.v >= s.v && q < 10 {
            self.v -= s.v;
            q += 1;
        }
        q as u64
    }
    fn overflowed(&self) -> bool {
        self.overflow
    }
}

/// The shortest digits of finite, non-zero `|v|` (as values 0..=9) and the decimal point
/// position `decpt` (`|v| ~= 0.DIGITS * 10^decpt`), as Python's `repr` picks them. `None`
/// for zero and non-finite values.
pub fn shortest(v: f64, digits: &mut [u8; 20]) -> Option<(usize, i32)> {
    let bits = v.to_bits();
    let frac = bits & ((1u64 << 52) - 1);
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0x7ff {
        return None;
    }
    let (f, e) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), biased - 1075)
    };
    if f == 0 {
        return None;
    }
    if (-122..=60).contains(&e) {
        if let Some(out) = generate::<Wide>(f, e, frac == 0 && biased > 1, digits) {
            return Some(out);
        }
    }
    generate::<Big>(f, e, frac == 0 && biased > 1, digits)
}

/// Digit generation for `v = f * 2^e`; `asymmetric` when the gap below `v` is half the
/// gap above (`v` is the lowest float of a normal binade, other than 2^-1022, whose
/// subnormal neighbours below are spaced like the floats above). `None` on overflow of
/// `N`.
fn generate<N: Nat>(
    f: u64,
    e: i32,
    asymmetric: bool,
    digits: &mut [u8; 20],
) -> Option<(usize, i32)> {
    let inclusive = f.is_multiple_of(2);

    // decpt k with 10^(k-1) <= v < 10^k: estimate from the binary exponent (exact or one
    // too small; log10(2) * n is never within 1e-4 of an integer for 0 < |n| < 1100), then
    // correct below.
    let log2_v = e + (64 - f.leading_zeros() as i32) - 1;
    let mut k = (f64::from(log2_v) * std::f64::consts::LOG10_2).floor() as i32 + 1;

    // Integers r, s, mp, mm with v / 10^k = r / s, m+ / 10^k = mp / s, m- / 10^k = mm / s:
    // everything times 4 (so that a quarter gap is whole), then the power of two common
    // to all four divided out (it only makes the numbers longer). `mm` is kept only when
    // the interval is asymmetric (otherwise m- = m+).
    let (mut r, mut s, mut mp, mut mm) = (
        N::from_u64(f),
        N::from_u64(1),
        N::from_u64(1),
        N::from_u64(1),
    );
    if e >= 0 {
        // 4v = f 2^(e+2), 4 10^k = 5^k 2^(k+2), 4m+ = 2^(e+1), 4m- = 2^e (asymmetric).
        let (e, kk) = (e as u32, k.max(0) as u32);
        let t = (kk + 2).min(e);
        r.shl(e + 2 - t);
        s.mul_pow5(kk);
        s.shl(kk + 2 - t);
        mp.shl(e + 1 - t);
        if asymmetric {
            mm.shl(e - t);
        }
    } else if k > 0 {
        // 1 <= v < 2^53: 4v = 4f / 2^-e, scale 10^k on the other side.
        let kk = k as u32;
        r.shl(2);
        s.mul_pow5(kk);
        s.shl(kk + (2 - e) as u32);
        mp.shl(1);
    } else {
        // v < 1: 4v 10^n = f 5^n 2^(n+2) over 2^(2-e), with n = -k < 2-e; 2^n divided out.
        let n = (-k) as u32;
        r.mul_pow5(n);
        r.shl(2);
        s.shl((2 - e) as u32 - n);
        mp.mul_pow5(n);
        mp.shl(1);
        if asymmetric {
            mm.mul_pow5(n);
        }
    }
    if r.cmp(&s) != Ordering::Less {
        s.mul_small(10);
        k += 1;
    }

    let mut n = 0usize;
    loop {
        r.mul_small(10);
        mp.mul_small(10);
        if asymmetric {
            mm.mul_small(10);
        }
        let d = r.div_digit(&s) as u8;
        if r.overflowed() || s.overflowed() || mp.overflowed() || mm.overflowed() {
            return None;
        }
        // Truncating here leaves v - digits = r/s units: inside the interval if <= m-.
        let low = match r.cmp(if asymmetric { &mm } else { &mp }) {
            Ordering::Less => true,
            Ordering::Equal => inclusive,
            Ordering::Greater => false,
        };
        // Rounding the last digit up lands (s - r)/s units above v: inside if <= m+.
        let high = match r.sum_cmp(&mp, &s)? {
            Ordering::Greater => true,
            Ordering::Equal => inclusive,
            Ordering::Less => false,
        };
        *digits.get_mut(n)? = d;
        n += 1;
        if !low && !high {
            if n >= 18 {
                return None; // unreachable: 17 digits always identify a double
            }
            continue;
        }
        let round_up = if low && high {
            // Both read back as v: the nearer one, and at an exact tie the even digit.
            match r.sum_cmp(&r, &s)? {
                Ordering::Less => false,
                Ordering::Greater => true,
                Ordering::Equal => d % 2 == 1,
            }
        } else {
            high
        };
        if round_up {
            // Carry (only possible from a first digit 9: "9.9..." up to "10").
            let mut i = n;
            loop {
                if i == 0 {
                    digits[0] = 1;
                    n = 1;
                    k += 1;
                    break;
                }
                i -= 1;
                if digits[i] == 9 {
                    digits[i] = 0;
                    n = i;
                } else {
                    digits[i] += 1;
                    break;
                }
            }
        }
        break;
    }
    while n > 1 && digits[n - 1] == 0 {
        n -= 1;
    }
    Some((n, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits_of(v: f64) -> (String, i32) {
        let mut buf = [0u8; 20];
        let (n, k) = shortest(v, &mut buf).expect("finite non-zero");
        (buf[..n].iter().map(|d| char::from(b'0' + d)).collect(), k)
    }

    #[test]
    fn ties_go_to_even() {
        // 2^49 + 0.25: .2 and .3 are equally near; Python picks the even digit.
        assert_eq!(
            digits_of(2f64.powi(49) + 0.25),
            ("5629499534213122".into(), 15)
        );
        // 2^49 + 0.75: .7 and .8; even is 8.
        assert_eq!(
            digits_of(2f64.powi(49) + 0.75),
            ("5629499534213128".into(), 15)
        );
    }

    #[test]
    fn both_widths_agree() {
        // Values the u128 path takes, also run through the bignum path.
        let mut x = 1.0e-21f64;
        while x < 1.0e36 {
            for v in [x, x * 1.1, x * 3.7, x * 7.3] {
                let bits = v.to_bits();
                let frac = bits & ((1u64 << 52) - 1);
                let biased = ((bits >> 52) & 0x7ff) as i32;
                let (f, e) = (frac | (1u64 << 52), biased - 1075);
                let asym = frac == 0 && biased > 1;
                let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
                let wide = generate::<Wide>(f, e, asym, &mut a);
                let big = generate::<Big>(f, e, asym, &mut b);
                if let Some((n, k)) = wide {
                    assert_eq!(Some((n, k)), big, "{v:e}");
                    assert_eq!(a[..n], b[..n], "{v:e}");
                }
            }
            x *= 10.0;
        }
    }

    #[test]
    fn agrees_with_std_where_no_tie_is_possible() {
        // Outside about 2^-27 .. 2^51 no float is a tie (see engram/bench/floats.py), so
        // there Rust's own shortest digits (nearest, ties up) must be the same digits: an
        // independent check of the bignum path over every exponent.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut checked = 0;
        while checked < 50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if !v.is_finite() || v == 0.0 || (v.abs() > 1e-9 && v.abs() < 1e16) {
                continue;
            }
            let (digits, k) = digits_of(v);
            let std = format!("{:e}", v.abs());
            let (mantissa, exp) = std.split_once('e').expect("exponent");
            let std_digits: String = mantissa.chars().filter(|c| *c != '.').collect();
            assert_eq!(digits, std_digits, "{v:e}");
            assert_eq!(k - 1, exp.parse::<i32>().expect("int"), "{v:e}");
            checked += 1;
        }
    }

    #[test]
    fn simple_values() {
        assert_eq!(digits_of(1.0), ("1".into(), 1));
        assert_eq!(digits_of(0.1), ("1".into(), 0));
        assert_eq!(digits_of(100.0), ("1".into(), 3));
        assert_eq!(digits_of(5e-324), ("5".into(), -323));
        assert_eq!(digits_of(f64::MAX), ("17976931348623157".into(), 309));
        assert_eq!(
            digits_of(9007199254740993.0),
            ("9007199254740992".into(), 16)
        );
    }
}
