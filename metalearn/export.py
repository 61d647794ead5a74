"""`metalearn-export`: an embedding method's encoder as a file a deployment loads without metalearn.

    metalearn-export run=outputs/train/<date>/<run> format=onnx            # -> <run>/export/encoder.onnx
    metalearn-export run=... format=pt2 out=encoder.pt2                     # a torch.export program
    metalearn-export run=... out=mine.onnx overwrite=true                   # replace a file this command did not write

The file maps preprocessed images [N, C, H, W] (any N) to the codes the method compares; the
preprocessing (size, channels, mean, std, inversion) goes beside it as `<file>.json`. With the codes,
classification is the method's head: ProtoNet's nearest class mean in squared Euclidean distance, the
baselines' cosine or linear classifier fitted on the support codes. Only embedding methods have such
an encoder; methods that adapt their weights at test time (MAML family, Meta-Learner LSTM) have none.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metalearn.cli import console_script
from metalearn.errors import MetalearnError

KEYS = {"run": None, "format": "onnx", "out": None, "checkpoint": "best", "overwrite": "false"}
MEANINGS = {"run": "the trained run folder (an embedding method's)", "format": "onnx | pt2 (a torch.export program)",
            "out": "the file to write (null: <run>/export/encoder.<format>)", "checkpoint": "best | last",
            "overwrite": "true: replace an out= file this command did not write"}
FORMATS = ("onnx", "pt2")


def parse_args(argv: list[str]) -> dict[str, str | None]:
    from metalearn.cli import parse_key_values

    args = parse_key_values(argv, "metalearn-export", KEYS, ("run",),
                            "metalearn-export run=outputs/train/<date>/<run> format=onnx")
    if args["format"] not in FORMATS:
        raise MetalearnError(f"format={args['format']} is not one of: {', '.join(FORMATS)}")
    if args["overwrite"] not in ("true", "false"):
        raise MetalearnError(f"overwrite={args['overwrite']} is not one of: true, false")
    return args


def written_by_export(path: Path) -> bool:
    """Whether `path` is an encoder this command wrote: its sidecar `<file>.json` says so."""
    try:
        sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(sidecar, dict) and sidecar.get("output") == "codes [N, D]" and "preprocess" in sidecar


def encoder_module(method):
    """The method's encode() as a module of its own (what is exported), in eval mode: images -> flat codes."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m.encode(x).flatten(1)

    return Encoder(method).eval()


def export(run: str, fmt: str, out: str | None = None, checkpoint: str = "best", overwrite: bool = False) -> Path:
    """Write the encoder of `run` as `fmt` (onnx | pt2); returns the file. It replaces only an encoder (and its
    sidecar) this command wrote, unless `overwrite`."""
    import torch

    from metalearn.engine.restore import restore_method
    from metalearn.files import refuse_to_replace
    from metalearn.methods.base import EmbeddingMethod

    path = Path(out) if out else Path(run) / "export" / f"encoder.{fmt}"
    refuse_to_replace(path, written_by_export(path), "metalearn-export", overwrite)
    sidecar_path = path.with_name(path.name + ".json")
    refuse_to_replace(sidecar_path, written_by_export(path), "metalearn-export", overwrite)
    method, ckpt = restore_method(run, checkpoint)
    if not isinstance(method, EmbeddingMethod) or not method.encodes_each_image_alone():
        raise MetalearnError(f"{method.name} has no fixed encoder to export: it adapts at test time or normalises each "
                             f"image by its task's batch statistics (method.test_batch_norm); export works for embedding "
                             f"methods on running statistics (protonet, matching without fce, relation, siamese, baselines)")
    pre = ckpt["preprocess"]
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = encoder_module(method)
    x = torch.zeros(2, pre["channels"], pre["image_size"], pre["image_size"])
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        if fmt == "pt2":
            program = torch.export.export(encoder, (x,), dynamic_shapes={"x": {0: batch}})
            torch.export.save(program, str(path))
        else:
            try:
                import onnxscript  # noqa: F401 - torch's ONNX exporter needs it
            except ImportError:
                raise MetalearnError('format=onnx needs the onnx and onnxscript packages; install them with '
                                     'pip install -e ".[export]"') from None
            torch.onnx.export(encoder, (x,), str(path), input_names=["images"], output_names=["codes"],
                              dynamic_shapes={"x": {0: batch}}, dynamo=True, external_data=False)
    sidecar = {"method": method.name, "input": "images [N, C, H, W], float32, preprocessed as below",
               "output": "codes [N, D]", "preprocess": {k: (v.tolist() if hasattr(v, "tolist") else v)
                                                        for k, v in pre.items()}}
    sidecar_path.write_text(json.dumps(sidecar, indent=2))
    return path


@console_script
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("--help", "-h") for a in argv):
        from metalearn.cli import keys_help

        print(f"{__doc__}\n{keys_help(KEYS, MEANINGS, ('run',))}")
        return
    try:
        args = parse_args(argv)
        path = export(args["run"], args["format"], args["out"], args["checkpoint"], args["overwrite"] == "true")
    except MetalearnError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{path} (preprocessing: {path.name}.json)")


if __name__ == "__main__":
    main()
