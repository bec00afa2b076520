"""schemathesis against the service's own OpenAPI schema: no 5xx, responses match the schema."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings as hsettings  # noqa: E402
from schemathesis import checks  # noqa: E402

from reelrec.config import load_settings  # noqa: E402
from reelrec.serve.api import create_app  # noqa: E402


def _app():
    import tempfile
    from reelrec.domain.catalog import Catalog, Title
    d = tempfile.mkdtemp(prefix="reelrec-fuzz-")
    Catalog.from_titles([Title("t1", "Heat", "movie", ["crime"], runtime_min=120),
                         Title("s1", "Narcos", "series", ["crime"], episodes=10,
                               episode_runtime_min=50)]).save(d)
    return create_app(load_settings(data_dir=d))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@hsettings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_schema_conformance(case):
    # positive_data_acceptance is left out on purpose: JSON Schema cannot express the per-type
    # payload rules, the catalog and clock checks, so a schema-valid event may still be a 422.
    case.call_and_validate(checks=[
        checks.not_a_server_error, checks.status_code_conformance,
        checks.content_type_conformance, checks.response_schema_conformance,
    ])
