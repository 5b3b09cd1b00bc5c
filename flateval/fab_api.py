"""FAB's backend API, as FAB's own orchestrator speaks it (flatland-benchmarks,
``evaluation/flatland3_benchmarks/orchestrator/orchestrator_common.py``): through ``fab-clientlib``,
with a token from the OAuth client-credentials grant (``requests-oauthlib``'s backend application
flow, fetched anew for every call as there), posting

* submission statuses: ``POST /submissions/{id}/statuses`` with STARTED / SUCCESS / FAILURE and a
  message;
* per-scenario scores: ``POST /results/submissions/{id}/tests/{test_id}``, one request per scenario,
  body ``{"data": [{"scenario_id": ..., "scores": {"normalized_reward": f, "percentage_complete": f}}]}``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

log = logging.getLogger("flateval.fab")

STARTED, SUCCESS, FAILURE = "STARTED", "SUCCESS", "FAILURE"
GENERAL_FAILURE = "General failure."  # FAB's message for a failure that is not the submission's


class FabApiError(RuntimeError):
    """A request to FAB's backend failed; one line."""


def clientlib():
    """`fab_clientlib` with its names resolved now: its lazy imports warn that two of them shadow each
    other, a warning for its authors, not for a host."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import fab_clientlib

        for name in ("ApiClient", "Configuration", "DefaultApi", "SubmissionsSubmissionIdsStatusesPostRequest",
                     "ResultsSubmissionsSubmissionIdTestsTestIdsPostRequest",
                     "ResultsSubmissionsSubmissionIdTestsTestIdsPostRequestDataInner"):
            getattr(fab_clientlib, name)
    return fab_clientlib


@dataclass(frozen=True)
class FabApi:
    api_url: str
    client_id: str
    client_secret: str
    token_url: str

    def _api(self):
        """A `fab_clientlib.DefaultApi` with a fresh access token (FAB's `_backend_application_flow`)."""
        from oauthlib.oauth2 import BackendApplicationClient
        from requests_oauthlib import OAuth2Session

        oauth = OAuth2Session(client=BackendApplicationClient(client_id=self.client_id))
        token = oauth.fetch_token(self.token_url, client_id=self.client_id, client_secret=self.client_secret)
        lib = clientlib()
        return lib.DefaultApi(lib.ApiClient(configuration=lib.Configuration(host=self.api_url,
                                                                            access_token=token["access_token"])))

    def post_status(self, submission_id: str, status: str, message: str | None = None) -> None:
        """Post a status; a failure to post is logged, never raised (as FAB's orchestrator does)."""
        try:
            self._api().submissions_submission_ids_statuses_post(
                [submission_id], clientlib().SubmissionsSubmissionIdsStatusesPostRequest(status=status, message=message))
        except Exception as exc:
            log.warning("flateval: could not post %s for submission %s: %s: %s", status, submission_id,
                        type(exc).__name__, exc)

    def post_scores(self, submission_id: str, results: dict[str, dict[str, dict[str, float]]]) -> None:
        """Post every scenario's scores (test id -> scenario id -> scores), one request per scenario;
        raises `FabApiError` when FAB refuses one (the results are the point of the evaluation)."""
        lib = clientlib()
        try:
            api = self._api()
            for test_id, scenarios in results.items():
                for scenario_id, scores in scenarios.items():
                    api.results_submissions_submission_id_tests_test_ids_post(
                        submission_id=submission_id, test_ids=[test_id],
                        results_submissions_submission_id_tests_test_ids_post_request=(
                            lib.ResultsSubmissionsSubmissionIdTestsTestIdsPostRequest(data=[
                                lib.ResultsSubmissionsSubmissionIdTestsTestIdsPostRequestDataInner(
                                    scenario_id=scenario_id, scores=scores)])))
        except Exception as exc:
            raise FabApiError(f"could not upload the results of submission {submission_id}: "
                              f"{type(exc).__name__}: {exc}") from None
