"""Format readers: bytes -> IR.  Readers are imported lazily so a scan only pays for what it reads."""

from __future__ import annotations

import importlib

from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.ir import ArtifactFormat

# One module per format; "module:Class".
READERS: dict[ArtifactFormat, str] = {
    ArtifactFormat.SAVEDMODEL: "modelwarden.formats.savedmodel:SavedModelReader",
    ArtifactFormat.GRAPHDEF: "modelwarden.formats.graphdef:GraphDefReader",
    ArtifactFormat.KERAS_V3: "modelwarden.formats.keras_v3:KerasV3Reader",
    ArtifactFormat.KERAS_H5: "modelwarden.formats.keras_h5:KerasH5Reader",
    ArtifactFormat.TFLITE: "modelwarden.formats.tflite:TFLiteReader",
    ArtifactFormat.TF_CHECKPOINT: "modelwarden.formats.checkpoint:CheckpointReader",
    ArtifactFormat.PICKLE: "modelwarden.formats.pickle_file:PickleReader",
    ArtifactFormat.PYTORCH: "modelwarden.formats.pytorch:PyTorchReader",
    ArtifactFormat.NUMPY: "modelwarden.formats.numpy_file:NumpyReader",
    ArtifactFormat.ONNX: "modelwarden.formats.onnx:OnnxReader",
    ArtifactFormat.SAFETENSORS: "modelwarden.formats.safetensors:SafetensorsReader",
    ArtifactFormat.ARCHIVE: "modelwarden.formats.archive:ArchiveReader",
    ArtifactFormat.GGUF: "modelwarden.formats.hub.gguf:GgufReader",
    ArtifactFormat.HF_MODEL: "modelwarden.formats.hub.hf_directory:HfDirectoryReader",
    ArtifactFormat.MLFLOW: "modelwarden.formats.hub.mlflow:MlflowReader",
}


def reader_for(fmt: ArtifactFormat) -> Reader:
    module, _, cls = READERS[fmt].partition(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["Candidate", "Limits", "DEFAULT_LIMITS", "Reader", "READERS", "reader_for"]
