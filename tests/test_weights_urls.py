"""Weights by URL: served by a local HTTP server, downloaded into $FVCORE_CACHE once, checked
against a sha256 fragment, and nothing left behind when a download fails."""
import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rein_d2.checkpoint.compact import CompactCheckpointer
from rein_d2.checkpoint.remote import WeightsDownloadError
from rein_d2.checkpoint.vfm_weights import read_state_dict

REPO = Path(__file__).resolve().parents[1]


class Server:
    """Serves `root`; '/short/<name>' announces more bytes than it sends, as a dropped connection does."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                if self.path.startswith("/short/"):
                    body = (root / self.path.removeprefix("/short/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body) * 2))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def served(tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    cache = tmp_path / "cache"
    monkeypatch.setenv("FVCORE_CACHE", str(cache))
    server = Server(root)
    yield server, root, cache
    server.httpd.shutdown()


def files_in(cache: Path) -> list[str]:
    """Downloaded files (iopath's lock files are not weights)."""
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_a_url_with_its_checksum_is_downloaded_once_then_read_from_the_cache(served):
    server, root, cache = served
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    save_file(tensors, str(root / "vit_once.safetensors"))
    digest = hashlib.sha256((root / "vit_once.safetensors").read_bytes()).hexdigest()
    url = f"{server.url}/vit_once.safetensors#sha256={digest}"
    for _ in range(2):
        assert torch.equal(read_state_dict(url, "MODEL.VIT.WEIGHTS")["w"], tensors["w"])
    assert server.requests == ["/vit_once.safetensors"]
    assert files_in(cache) == ["vit_once.safetensors"]


def test_a_wrong_checksum_deletes_the_download_and_names_both_digests(served):
    server, root, cache = served
    save_file({"w": torch.ones(2)}, str(root / "vit_bad.safetensors"))
    actual = hashlib.sha256((root / "vit_bad.safetensors").read_bytes()).hexdigest()
    with pytest.raises(WeightsDownloadError, match=rf"MODEL.VIT.WEIGHTS: .*vit_bad.safetensors has sha256 {actual}, "
                                                   rf"not the {'0' * 64}"):
        read_state_dict(f"{server.url}/vit_bad.safetensors#sha256={'0' * 64}", "MODEL.VIT.WEIGHTS")
    assert files_in(cache) == []
    with pytest.raises(WeightsDownloadError, match="'#md5=1' is not a checksum"):
        read_state_dict(f"{server.url}/vit_bad.safetensors#md5=1", "MODEL.VIT.WEIGHTS")


@pytest.mark.parametrize("path", ["/missing.pth", "/short/model.pth"])
def test_a_failed_or_partial_download_leaves_no_file_and_names_the_url(served, path):
    server, root, cache = served
    torch.save({"model": {"w": torch.ones(1000)}}, root / "model.pth")
    with pytest.raises(WeightsDownloadError, match=rf"MODEL.WEIGHTS: cannot download {server.url}{path}"):
        CompactCheckpointer(torch.nn.Linear(2, 2)).load(f"{server.url}{path}")
    assert files_in(cache) == []


def test_model_weights_by_url_load_into_the_model(served):
    server, root, _ = served
    source = torch.nn.Linear(3, 2)
    torch.save({"model": source.state_dict()}, root / "linear.pth")
    target = torch.nn.Linear(3, 2)
    CompactCheckpointer(target).load(f"{server.url}/linear.pth")
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)


def test_the_vfm_converter_reads_a_url(served, tmp_path):
    server, root, _ = served
    import timm

    vit = timm.create_model("vit_small_patch16_224", pretrained=False, embed_dim=32, depth=1, num_heads=2,
                            img_size=32, num_classes=0)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(root / "timm_vit.safetensors"))
    out = tmp_path / "converted.safetensors"
    cmd = [sys.executable, str(REPO / "tools" / "convert_vfm_weights.py"), f"{server.url}/timm_vit.safetensors",
           str(out), "--timm-name", "vit_small_patch16_224", "--img-size", "32", "--embed-dim", "32",
           "--depth", "1", "--num-heads", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file()
