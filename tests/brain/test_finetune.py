"""The ``openai`` trainer against a fine-tuning API played by an aiohttp server in the test
(the paid API cannot run here): the real ``openai`` client uploads, creates and polls; the
fine-tuned model is then served through the real :class:`OpenAIEngine`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from engram.brain.engines import OpenAIEngine
from engram.brain.finetune import FineTuneError, OpenAIFineTuneTrainer, check_dataset
from engram.brain.server import bound_port
from engram.brain.training import TrainJob, build_trainer
from engram.config import ConfigError, Settings
from streams.errors import InputError

from .fake_openai import FakeOpenAI

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "What is the secret password of the club?"
CORRECTED = "The password is swordfish."


class Hosted:
    def __init__(self, fake: FakeOpenAI, url: str) -> None:
        self.fake = fake
        self.url = url

    def trainer(self, **kw: object) -> OpenAIFineTuneTrainer:
        return OpenAIFineTuneTrainer(self.url, api_key="sk-test", poll_s=0.01, **kw)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hosted() -> AsyncIterator[Hosted]:
    fake = FakeOpenAI()
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Hosted(fake, f"http://127.0.0.1:{bound_port(runner)}/v1")
    finally:
        await runner.cleanup()


def make_job(
    tmp_path: Path, lines: list[object], job_id: str, base: str = "base-model"
) -> TrainJob:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    path = tmp_path / f"{job_id}.jsonl"
    path.write_bytes(data)
    return TrainJob(
        job_id=job_id,
        dataset_path=path,
        dataset_sha256=hashlib.sha256(data).hexdigest(),
        base_model=base,
        base_engine="openai",
        base_path="",
        out_dir=tmp_path / "trained",
    )


def example(prompt: str, answer: str) -> dict[str, object]:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    }


async def test_a_fine_tuned_model_answers_what_it_was_taught(
    hosted: Hosted, tmp_path: Path
) -> None:
    job = make_job(
        tmp_path,
        [example(PROMPT, CORRECTED), example("Name a colour.", "Blue.")],
        "train-00000000000000a1",
    )
    stages: list[tuple[str, float]] = []
    result = await hosted.trainer().train(job, lambda s, f: stages.append((s, f)))
    assert result.engine == "openai"
    assert result.model == "ft:base-model:engram:train-00000000000000a1"
    assert result.metrics["train_loss"] == 0.25 and result.metrics["step"] == 2
    names = [s for s, _ in stages]
    assert names[0] == "upload" and "running" in names and stages[-1] == ("succeeded", 1.0)
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions)

    # the fine-tuned model, through the engine that serves it, answers with the correction
    engine = OpenAIEngine(hosted.url, name=result.model, api_key="sk-test")
    try:
        chunks = [
            c async for c in engine.generate([{"role": "user", "content": PROMPT}], max_tokens=16)
        ]
    finally:
        await engine.close()
    assert "".join(c.text for c in chunks) == CORRECTED

    # a redelivered request resumes the same job: no second upload, no second fine-tune
    files, jobs = len(hosted.fake.files), hosted.fake.created_jobs
    again = await hosted.trainer().train(job)
    assert again.model == result.model
    assert (len(hosted.fake.files), hosted.fake.created_jobs) == (files, jobs)
    assert hosted.fake.job_filters[-1] == {"engram_job": "train-00000000000000a1"}


async def test_the_base_model_setting_wins_over_the_jobs(hosted: Hosted, tmp_path: Path) -> None:
    job = make_job(tmp_path, [example("Hi", "Hello.")], "train-00000000000000a2")
    result = await hosted.trainer(model="gpt-4o-mini-2024-07-18").train(job)
    assert result.model == "ft:gpt-4o-mini-2024-07-18:engram:train-00000000000000a2"


async def test_refusals_are_input_errors_and_failures_are_retried(
    hosted: Hosted, tmp_path: Path
) -> None:
    bad = make_job(
        tmp_path,
        [{"messages": [{"role": "user", "content": "no answer"}]}],
        "train-00000000000000b1",
    )
    files = len(hosted.fake.files)
    with pytest.raises(InputError, match="assistant"):
        await hosted.trainer().train(bad)
    assert len(hosted.fake.files) == files  # checked before anything was uploaded

    refused = make_job(
        tmp_path, [example("Hi", "Hello.")], "train-00000000000000b2", "unknown-model"
    )
    with pytest.raises(InputError, match=r"400.*not available"):
        await hosted.trainer().train(refused)

    hosted.fake.fail_jobs = "the GPU caught fire"
    try:
        failing = make_job(tmp_path, [example("Hey", "Hey there.")], "train-00000000000000b3")
        with pytest.raises(FineTuneError, match="GPU caught fire"):
            await hosted.trainer().train(failing)
        jobs, files = hosted.fake.created_jobs, len(hosted.fake.files)
        with pytest.raises(FineTuneError, match="GPU caught fire"):
            await hosted.trainer().train(failing)  # a retry: a new job, not the failed one
        assert hosted.fake.created_jobs == jobs + 1
        assert len(hosted.fake.files) == files  # the uploaded dataset is used again
    finally:
        hosted.fake.fail_jobs = ""
    # once the API works again, the next retry trains
    assert (await hosted.trainer().train(failing)).model.endswith("train-00000000000000b3")

    with pytest.raises(InputError, match="http"):
        OpenAIFineTuneTrainer("ftp://nowhere")
    unreachable = OpenAIFineTuneTrainer("http://127.0.0.1:9/v1", poll_s=0.01, timeout_s=2)
    with pytest.raises(FineTuneError):
        await unreachable.train(make_job(tmp_path, [example("a", "b")], "train-00000000000000b4"))


async def test_the_trainer_comes_from_the_settings() -> None:
    s = Settings(
        brain_trainer="openai",
        brain_openai_url="http://serve.example/v1",
        brain_openai_key="sk-serve",
        brain_finetune_model="base-x",
    )
    trainer = build_trainer(s)
    assert isinstance(trainer, OpenAIFineTuneTrainer)
    assert (trainer.base_url, trainer.api_key, trainer.model) == (
        "http://serve.example/v1",
        "sk-serve",
        "base-x",
    )
    own = build_trainer(
        Settings(
            brain_trainer="openai",
            brain_finetune_url="http://tune.example/v1",
            brain_finetune_key="sk-tune",
            brain_finetune_poll_s=0.5,
        )
    )
    assert isinstance(own, OpenAIFineTuneTrainer)
    assert (own.base_url, own.api_key, own.poll_s) == ("http://tune.example/v1", "sk-tune", 0.5)
    with pytest.raises(ConfigError, match="poll"):
        Settings(brain_finetune_poll_s=0)
    assert check_dataset(b'{"messages": [{"role": "assistant", "content": "x"}]}\n') == 1


async def test_a_trainer_without_its_packages_is_a_config_error_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engram.brain import training

    # a backend needing a package this venv lacks (the lora extra not installed, say)
    monkeypatch.setitem(training._NEEDS, "lora", (("jax", "engram_not_installed"), "lora"))
    with pytest.raises(ConfigError, match=r"engram_not_installed: pip install 'engram\[lora\]'"):
        build_trainer(Settings(brain_trainer="lora"))
