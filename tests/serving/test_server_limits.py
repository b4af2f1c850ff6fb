"""`tirec serve` is safe by default: internal errors do not leak details, and a reload cannot
load models from outside the operator's roots."""
import os
import re

import grpc
import numpy as np
import pytest
import requests
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.config import model_server_config_pb2

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


# ---- reload ------------------------------------------------------------------------------------

def _reload(stubs, name: str, base_path: str):
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    return stubs.model.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                                 timeout=60)


def test_reload_loads_models_only_under_the_operators_roots(kit, tmp_path):
    toy = kit.store.install(str(tmp_path / "models" / "toy"), [1])
    outside = kit.store.install(str(tmp_path / "elsewhere" / "m"), [2])
    os.symlink(outside, os.path.join(toy, "link"))
    server = kit.start_server(model_base_path=toy, model_name="toy")
    stubs = kit.Stubs(server.grpc_port)
    try:
        for path in (outside, f"{toy}/../../elsewhere/m", f"{toy}/link", str(tmp_path / "models")):
            e = kit.rpc_error(lambda req, timeout: _reload(stubs, "evil", path), None)
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED, (path, e.code(), e.details())
            assert e.details() == (f"model 'evil': base_path {path!r} is not under a model root this server "
                                   f"allows (--model-base-path, the --model-config-file's models, "
                                   f"--allowed-model-roots)")
        assert server.manager.model_names() == ["toy"]  # nothing changed
        assert _reload(stubs, "twin", f"{toy}/.").status.error_code == 0  # under the root: fine
        assert server.manager.model_names() == ["twin"]
    finally:
        stubs.close()
        server.stop()
    server = kit.start_server(model_base_path=toy, model_name="toy",
                              allowed_model_roots=(str(tmp_path / "elsewhere"),))
    stubs = kit.Stubs(server.grpc_port)
    try:
        assert _reload(stubs, "other", f"{toy}/link").status.error_code == 0  # resolves into an allowed root
        assert server.manager.available_versions("other") == [2]
    finally:
        stubs.close()
        server.stop()
