"""Property-based run over signing's OpenAPI schema against the real process: never a 5xx.

Schemathesis generates valid and invalid requests for every operation; each response must be
a non-5xx that conforms to the documented schema. Bounded (``max_examples``) to stay quick.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

ADMIN = {"email": "admin@example.com", "password": "admin-password-for-tests"}
OPERATIONS = [
    "POST /users/add",
    "POST /users/auth",
    "POST /users/verify-token",
    "GET /users/",
    "POST /users/logout",
    "GET /.well-known/jwks.json",
    "GET /health",
]


@pytest.fixture(scope="module")
def admin_token(signing_process) -> str:
    resp = httpx.post(f"{signing_process.url}/users/auth", json=ADMIN)
    resp.raise_for_status()
    return str(resp.json()["access_token"])


@pytest.fixture(scope="module")
def signing_schema(signing_process):
    config = schemathesis.Config.from_dict(
        {
            "checks": {
                # A body over 64 KiB is refused with 413 before it is even parsed.
                "negative_data_rejection": {
                    "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 429]
                }
            }
        }
    )
    return schemathesis.openapi.from_url(f"{signing_process.url}/openapi.json", config=config)


def test_every_operation_is_fuzzed(signing_schema):
    labels = {result.ok().label for result in signing_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("label", OPERATIONS)
def test_api_never_answers_5xx(signing_schema, signing_process, admin_token, label, mode):
    if mode is GenerationMode.NEGATIVE and label.startswith("GET /") and label != "GET /users/":
        pytest.skip("no inputs to get wrong")
    operation = signing_schema.find_operation_by_label(label)
    assert operation is not None

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case):
        headers = {}
        # Invalid requests go without a token: dropping it is one of the ways they are invalid.
        if mode is GenerationMode.POSITIVE:
            token = admin_token
            if label == "POST /users/logout":  # logging out would revoke the shared token
                resp = httpx.post(f"{signing_process.url}/users/auth", json=ADMIN)
                token = resp.json()["access_token"]
            headers["Authorization"] = f"Bearer {token}"
        case.call_and_validate(
            base_url=signing_process.url,
            headers=headers,
            # Email validity is stricter than JSON Schema's "format: email" can say (reserved
            # domains such as .test are refused with 422), so schema-valid data may be rejected.
            excluded_checks=[positive_data_acceptance],
        )

    check()


def test_the_fuzzed_process_logged_no_unhandled_error(signing_process):
    log = signing_process.log_path.read_text()
    assert "unhandled error" not in log
    assert "Traceback" not in log
