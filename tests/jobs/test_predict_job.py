"""The `predict` job kind: checked at submit, run by a real worker through the same function as `mlbox predict`."""

from __future__ import annotations

import pandas as pd
import pytest

from mlbox.serve.batch import predict_file

from ..test_batch_predict import scoring_frame, train_models
from .conftest import JobBox


@pytest.fixture
def scoring_box(jbox: JobBox) -> JobBox:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        train_models(jbox.box, jbox.home)
    scoring_frame(1500, seed=11).to_parquet(jbox.tmp / "in.parquet")
    return jbox


def test_predict_job_scores_the_file_like_the_command(scoring_box: JobBox) -> None:
    jb = scoring_box
    job_id = jb.submit("predict", "churn:latest", "in.parquet", "scored.parquet", "--cpus", "1")
    payload = jb.job(job_id).payload
    assert payload["model"] == "churn:1"  # the reference is pinned at submit: a later version does not change the job
    assert payload["output"] == str((jb.tmp / "scored.parquet").resolve())
    jb.worker_once()
    job = jb.wait_status(job_id, ("succeeded", "failed"))
    assert job.status == "succeeded", jb.log(job_id)
    assert "scored 1500 rows with churn:1" in jb.log(job_id)
    predict_file(jb.box.registry, "churn:1", jb.tmp / "in.parquet", jb.tmp / "direct.parquet", box=jb.home, roots=[jb.tmp], threads=1)
    pd.testing.assert_frame_equal(pd.read_parquet(jb.tmp / "scored.parquet"), pd.read_parquet(jb.tmp / "direct.parquet"))


def test_predict_job_is_refused_at_submit_when_it_could_not_run(scoring_box: JobBox, tmp_path_factory: pytest.TempPathFactory) -> None:
    jb = scoring_box
    (jb.tmp / "taken.parquet").write_bytes(b"x")
    outside = tmp_path_factory.mktemp("outside") / "x.parquet"
    for args, message in [
        (("nomodel:1", "in.parquet", "o.parquet"), "no model version"),
        (("churn:1", "missing.parquet", "o.parquet"), "does not exist"),
        (("churn:1", "in.parquet", str(outside)), "outside the allowed places"),
        (("churn:1", "in.parquet", "taken.parquet"), "exists"),
        (("churn:1", "in.parquet"), "three arguments"),
    ]:
        r = jb.mlbox("jobs", "submit", "predict", *args)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
    assert jb.queue.list_jobs() == []
    assert jb.submit("predict", "churn:1", "in.parquet", "taken.parquet", "--force")
