"""`tirec serve` is safe by default: internal errors do not leak details."""
import re

import grpc
import numpy as np
import pytest
import requests

from tirec.serving.servable import ServingError

X = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
K = [1, 7]


@pytest.fixture(scope="module")
def safe(kit, tmp_path_factory):
    """``toy`` version 1 served over gRPC and REST."""
    base = kit.store.install(str(tmp_path_factory.mktemp("safe") / "toy"), [1])
    server = kit.start_server(model_base_path=base, model_name="toy", rest_port=0)
    stubs = kit.Stubs(server.grpc_port)
    yield server, stubs
    stubs.close()
    server.stop()


# ---- internal errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("error", [RuntimeError("secret /srv/models/x.pb"),
                                   ServingError("INTERNAL", "secret /srv/models/x.pb")])
def test_internal_errors_carry_a_request_id_not_the_details(kit, safe, monkeypatch, caplog, error):
    server, stubs = safe

    def fail(*_args):
        raise error

    monkeypatch.setattr(server.core, "model_status", fail)
    monkeypatch.setattr(server.core, "predict", fail)
    r = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/toy", timeout=10)
    assert r.status_code == 500 and "secret" not in r.text
    rest_id = re.fullmatch(r"Internal error \(request id ([0-9a-f]{16})\); the server log has the details",
                           r.json()["error"])
    e = kit.rpc_error(stubs.predict.Predict, kit.predict_request("toy", {"x": np.array(X, np.float32),
                                                                         "k": np.array(K)}, "predict"))
    assert e.code() == grpc.StatusCode.INTERNAL and "secret" not in e.details()
    grpc_id = re.fullmatch(r"Internal error \(request id ([0-9a-f]{16})\); the server log has the details",
                           e.details())
    assert rest_id and grpc_id
    for match in (rest_id, grpc_id):
        logged = [rec for rec in caplog.records if match[1] in rec.getMessage()]
        assert logged and "secret /srv/models/x.pb" in logged[0].getMessage()
    if isinstance(error, RuntimeError):  # a bug: its traceback is logged
        assert all(rec.exc_info for rec in caplog.records if rest_id[1] in rec.getMessage())
