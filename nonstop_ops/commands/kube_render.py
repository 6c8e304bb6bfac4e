"""`nonstop kube-render`: the Serve config rendered into kuberay/'s RayService (nonstop_ops/kube.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()


@app.command("kube-render")
def kube_render(
    check: Annotated[bool, typer.Option("--check", help="exit 1 if the generated file is stale; write nothing")] = False,
    kuberay_dir: Annotated[Path, typer.Option("--kuberay-dir", help="the kustomize tree to write into")] = Path("kuberay"),
    config: Annotated[Path | None, typer.Option("--config", help="Serve config (default: the packaged one)")] = None,
) -> None:
    """Render serve_config.yaml into kuberay/'s RayService (serveConfigV2)."""
    from nonstop_ops import kube

    argv = ["--kuberay-dir", str(kuberay_dir)] + (["--config", str(config)] if config else []) + (["--check"] if check else [])
    raise typer.Exit(kube.main(argv))
