"""The nnictl launcher's end-of-experiment rule, against a scripted NNI manager (no nnictl)."""
import time

from experiments import launch


class _FakeRun:
    """A manager that sends "no more trials" while one trial still waits in its queue (as NNI 3.0's
    GridSearch does when the last two trials end together) and submits it a moment later."""

    def __init__(self, submit_after: float):
        self.t0 = time.monotonic()
        self.submit_after = submit_after
        self.status = "UNKNOWN"
        self.refreshed = False

    def get(self, path):
        now = time.monotonic() - self.t0
        if path == "/check-status":
            return {"status": "TUNER_NO_MORE_TRIAL"}
        jobs = [{"trialJobId": "a", "status": "SUCCEEDED"}, {"trialJobId": "b", "status": "SUCCEEDED"}]
        if now >= self.submit_after:
            jobs.append({"trialJobId": "c", "status": "RUNNING" if now < self.submit_after + 0.2 else "SUCCEEDED"})
        return jobs

    def refresh(self):
        self.refreshed = True


def test_no_more_trials_waits_for_the_queued_trial(monkeypatch):
    monkeypatch.setattr(launch, "NO_MORE_TRIAL_SETTLE_S", 0.5)
    run = _FakeRun(submit_after=0.3)         # within the settle time: must be waited for
    launch._wait_done(run, timeout=5, poll_s=0.02)
    assert run.refreshed and len(run.get("/trial-jobs")) == 3
    assert time.monotonic() - run.t0 >= 0.5 + 0.5   # settled again after the third trial ended
