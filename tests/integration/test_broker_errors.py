"""An unreachable task broker is one sentence, and the submitted job is kept (queued) so the
platform's maintenance loop can send it later."""

from __future__ import annotations

from sqlalchemy import select

from spe.db import readonly
from spe.jobs.models import Job
from tests.conftest import synthetic_numbers, write_people_csv, write_policy


def test_unreachable_broker_is_a_sentence_and_the_job_stays_queued(world, run_spe, tmp_path):
    data = write_people_csv(tmp_path / "people.csv", synthetic_numbers(5))
    policy = write_policy(tmp_path)
    out = run_spe(
        "--as",
        "reviewer",
        "dataset",
        "ingest",
        str(data),
        "--policy",
        str(policy),
        "--no-wait",
        env={"SPE_BROKER_URL": "redis://127.0.0.1:1/0"},
    )
    assert out.returncode == 5
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("error: Cannot reach the task broker at redis://127.0.0.1:1/0")
    with readonly() as s:
        ((job_id, status),) = s.execute(select(Job.id, Job.status)).all()
    assert status == "queued" and str(job_id) in out.stderr
