"""The services' specs (messaging/spec.py) say what each service is; these checks hold every
spec to the code it describes, and the library to knowing no service."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from contracts import EVENT_TYPES
from messaging import spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SPECS = spec.installed()


def test_every_service_folder_has_a_registered_spec():
    folders = {p.parent.name for p in ROOT.glob("services/*/pyproject.toml")}
    assert set(spec.names()) == folders


@pytest.mark.parametrize("service", SPECS, ids=lambda s: s.name)
def test_the_declared_routes_are_the_routes_the_router_serves(service):
    assert service.router is not None
    served = {f"{method} {route.path}" for route in service.router(None).routes
              for method in route.methods}
    assert served == set(service.routes)


@pytest.mark.parametrize("service", spec.consumers(), ids=lambda s: s.name)
def test_a_consumer_binds_every_event_type_it_subscribes_to(service):
    subscriptions = service.consumes.subscriptions(service.settings())
    assert subscriptions, f"{service.name} subscribes to nothing"
    for sub in subscriptions:
        assert service.consumes.receives(sub.event_type), (
            f"{service.name} handles {sub.event_type} but its bindings "
            f"{service.consumes.bindings} never route it to {service.consumes.queue}")


def test_produced_event_types_are_in_the_contract_and_someone_produces_each():
    produced = [t for s in SPECS for t in s.produces]
    assert set(produced) <= set(EVENT_TYPES)
    assert set(EVENT_TYPES) <= set(produced)


def test_default_ports_queues_and_tables_are_distinct():
    ports = [s.port for s in SPECS]
    queues = [s.consumes.queue for s in spec.consumers()]
    assert len(set(ports)) == len(ports)
    assert len(set(queues)) == len(queues)
    assert all(s.table_names for s in SPECS)


def test_the_library_names_no_service():
    names = "|".join(re.escape(name) for name in spec.names())
    pattern = re.compile(rf"\b({names})\b", re.IGNORECASE)
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for path in sorted((ROOT / "libs/messaging/src").rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def _imports_without(module: str, blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Import `module` in a fresh interpreter in which importing any of `blocked` fails."""
    code = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
            f"import {module}\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.integration
def test_the_contracts_import_without_transport_web_or_database_libraries():
    done = _imports_without("contracts", ("aio_pika", "aiormq", "fastapi", "sqlalchemy"))
    assert done.returncode == 0, done.stderr


@pytest.mark.integration
@pytest.mark.parametrize("module", ["payment.domain", "payment.handlers", "points.handlers",
                                    "mailer.handlers", "audit.handlers"])
def test_domain_and_use_cases_import_no_transport(module):
    done = _imports_without(module, ("aio_pika", "aiormq", "fastapi", "starlette", "uvicorn"))
    assert done.returncode == 0, done.stderr


@pytest.mark.integration
def test_a_blocked_import_does_fail_the_check():
    done = _imports_without("messaging.outbox", ("aio_pika",))
    assert done.returncode != 0 and "aio_pika" in done.stderr
