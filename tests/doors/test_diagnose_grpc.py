"""The diagnose engine's gRPC service through a real ``grpcio`` client on loopback: Diagnose,
BatchDiagnose (bidirectional stream), GetModelInfo and Health, authenticated with the HTTP API's keys,
errors as gRPC status codes. The model is the scripted upstream (the fault server), as in
tests/doors/test_diagnose_api.py, so each answer is known."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmhost.doors.grpc.server import protos, services
from llmhost.security.keys import KeyStore
from tests.conftest import LiveServer
from tests.doors.test_diagnose_api import DOC, SUGGESTIONS, oracle_says, serving_oracle
from tests.providers.fault_server import FaultServer


@pytest.fixture(scope="module")
def oracle() -> Iterator[FaultServer]:
    server = FaultServer().start()
    server.reset(oracle_says(json.dumps({"suggestions": SUGGESTIONS[:1]})))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path, oracle: FaultServer
) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("grpc") / "data"
    overrides: dict[str, Any] = {"diagnose": {"examples": 1}, "grpc": {"enabled": True, "port": 0}}
    with serving_oracle(data_dir, tiny_model_path, oracle, **overrides) as server:
        yield server


@pytest.fixture(scope="module")
def stub(live: LiveServer) -> Iterator[Any]:
    port = live.server.config.app.state.grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield services.DiagnoseStub(channel)


def _request(**fields: Any) -> Any:
    doc = protos.DiagnosticsDocument(
        summary=fields.pop("summary", DOC["summary"]),
        errors=[protos.ErrorItem(**e) for e in DOC["errors"]],
        metrics=[protos.MetricObservation(**m) for m in DOC["metrics"]],
        relations=[protos.Relation(**r) for r in DOC["relations"]],
        system={"workers": "4"},
    )
    return protos.DiagnoseRequest(document=doc, **fields)


def test_diagnose_answers_ranked_suggestions(stub: Any) -> None:
    d = stub.Diagnose(_request(summary="grpc one"))
    assert d.category == "error" and d.template == "error.v1" and d.model == "diag"
    assert [s.suggestion for s in d.suggestions] == [SUGGESTIONS[0]["suggestion"]]
    assert list(d.suggestions[0].components) == ["api"]  # "mainframe" is not in the document
    assert d.id.startswith("diag-") and len(d.examples) == 1 and not d.cached
    assert stub.Diagnose(_request(summary="grpc one")).cached


def test_batch_diagnose_streams_a_reply_per_request_and_errors_in_place(stub: Any) -> None:
    requests = [_request(summary=f"grpc batch {i}", tag=f"t{i}") for i in range(3)]
    requests.append(protos.DiagnoseRequest(document=protos.DiagnosticsDocument(summary="empty"), tag="bad"))
    replies = {r.tag: r for r in stub.BatchDiagnose(iter(requests))}
    assert set(replies) == {"t0", "t1", "t2", "bad"}
    assert all(replies[f"t{i}"].diagnosis.suggestions for i in range(3))
    assert replies["bad"].error_code == 400 and "at least one error" in replies["bad"].error


def test_model_info_and_health(stub: Any) -> None:
    info = stub.GetModelInfo(protos.ModelInfoRequest())
    assert info.model == "diag" and info.embedding_model == "all-minilm:l6-v2"
    assert len(info.templates) == 6 and sum(info.examples.values()) >= 20
    assert stub.Health(protos.HealthRequest()).serving


def test_bad_input_and_unknown_models_are_status_codes(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Diagnose(protos.DiagnoseRequest(document=protos.DiagnosticsDocument(summary="nothing")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stub.Diagnose(_request(summary="grpc other", model="no-such-model"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_keys_are_the_http_apis_keys(live: LiveServer, stub: Any) -> None:
    # The module's last test: once a key exists, the server needs one for good.
    keys = KeyStore(live.service.settings.database_path)
    _, reader = keys.create("reader", scopes=("models:read",))
    _, writer = keys.create("writer", scopes=("inference", "models:read"))
    keys.close()
    with pytest.raises(grpc.RpcError) as err:
        stub.Diagnose(_request(summary="grpc keyed"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # keys exist now: one is needed
    with pytest.raises(grpc.RpcError) as err:
        stub.Diagnose(_request(summary="grpc keyed"), metadata=(("authorization", f"Bearer {reader}"),))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert stub.GetModelInfo(protos.ModelInfoRequest(), metadata=(("x-api-key", reader),)).model == "diag"
    d = stub.Diagnose(_request(summary="grpc keyed"), metadata=(("authorization", f"Bearer {writer}"),))
    assert d.suggestions
    assert stub.Health(protos.HealthRequest()).serving  # open, as /health is
