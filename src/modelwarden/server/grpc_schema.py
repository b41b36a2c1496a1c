"""TensorFlow Serving's gRPC messages and services, declared as data, without TensorFlow.

``tensorflow.serving`` (predict, classification, regression, inference, get_model_metadata,
get_model_status, model, input, status .proto files) lives in a private descriptor pool
beside the TensorFlow messages it uses, which are not declared again: ``TensorProto``,
``TensorShapeProto``, ``SignatureDef`` and ``TensorInfo`` come from the scanner's schema
(:mod:`modelwarden.formats.tfproto`), ``Example`` from :mod:`modelwarden.server.example`,
``Any`` and ``Int64Value`` from protobuf's own well-known types.  Only fields the server
reads or writes are declared; anything else a client sends is kept as unknown fields and
ignored.  ``tests/test_server_grpc_schema.py`` checks every field number and type against
the ``tensorflow-serving-api`` package's generated modules (in a subprocess).

Enums the server only writes (``ModelVersionStatus.State``, ``tensorflow.error.Code``) are
declared ``int32``: the same varint on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import any_pb2, wrappers_pb2

from modelwarden.formats import tfproto
from modelwarden.formats.protoschema import ProtoSchema
from modelwarden.server import example

PACKAGE = "tensorflow.serving"
TENSOR = ".tensorflow.TensorProto"
EXAMPLE = ".tensorflow.Example"

MESSAGES: dict[str, list[tuple]] = {
    # model.proto
    "ModelSpec": [
        ("name", 1, "string"),
        ("version", 2, ".google.protobuf.Int64Value", "version_choice"),
        ("version_label", 4, "string", "version_choice"),
        ("signature_name", 3, "string"),
    ],
    # predict.proto
    "PredictRequest": [
        ("model_spec", 1, "ModelSpec"),
        ("inputs", 2, f"map<string,{TENSOR}>"),
        ("output_filter", 3, "string*"),
    ],
    "PredictResponse": [("model_spec", 2, "ModelSpec"), ("outputs", 1, f"map<string,{TENSOR}>")],
    # input.proto
    "ExampleList": [("examples", 1, f"{EXAMPLE}*")],
    "ExampleListWithContext": [("examples", 1, f"{EXAMPLE}*"), ("context", 2, EXAMPLE)],
    "Input": [
        ("example_list", 1, "ExampleList", "kind"),
        ("example_list_with_context", 2, "ExampleListWithContext", "kind"),
    ],
    # classification.proto
    "Class": [("label", 1, "string"), ("score", 2, "float")],
    "Classifications": [("classes", 1, "Class*")],
    "ClassificationResult": [("classifications", 1, "Classifications*")],
    "ClassificationRequest": [("model_spec", 1, "ModelSpec"), ("input", 2, "Input")],
    "ClassificationResponse": [("model_spec", 2, "ModelSpec"), ("result", 1, "ClassificationResult")],
    # regression.proto
    "Regression": [("value", 1, "float")],
    "RegressionResult": [("regressions", 1, "Regression*")],
    "RegressionRequest": [("model_spec", 1, "ModelSpec"), ("input", 2, "Input")],
    "RegressionResponse": [("model_spec", 2, "ModelSpec"), ("result", 1, "RegressionResult")],
    # inference.proto
    "InferenceTask": [("model_spec", 1, "ModelSpec"), ("method_name", 2, "string")],
    "InferenceResult": [
        ("model_spec", 1, "ModelSpec"),
        ("classification_result", 2, "ClassificationResult", "result"),
        ("regression_result", 3, "RegressionResult", "result"),
    ],
    "MultiInferenceRequest": [("tasks", 1, "InferenceTask*"), ("input", 2, "Input")],
    "MultiInferenceResponse": [("results", 1, "InferenceResult*")],
    # get_model_metadata.proto
    "SignatureDefMap": [("signature_def", 1, "map<string,.tensorflow.SignatureDef>")],
    "GetModelMetadataRequest": [("model_spec", 1, "ModelSpec"), ("metadata_field", 2, "string*")],
    "GetModelMetadataResponse": [
        ("model_spec", 1, "ModelSpec"),
        ("metadata", 2, "map<string,.google.protobuf.Any>"),
    ],
    # status.proto, get_model_status.proto
    "StatusProto": [("error_code", 1, "int32"), ("error_message", 2, "string")],
    "ModelVersionStatus": [("version", 1, "int64"), ("state", 2, "int32"), ("status", 3, "StatusProto")],
    "GetModelStatusRequest": [("model_spec", 1, "ModelSpec")],
    "GetModelStatusResponse": [("model_version_status", 1, "ModelVersionStatus*")],
}

SCHEMA = ProtoSchema(PACKAGE, "modelwarden/tensorflow_serving_apis.proto", MESSAGES,
                     deps=(tfproto.SCHEMA, example.SCHEMA, any_pb2.DESCRIPTOR, wrappers_pb2.DESCRIPTOR))

# ModelVersionStatus.State and tensorflow.error.Code values (get_model_status.proto, error_codes.proto)
VERSION_STATES = {"UNKNOWN": 0, "START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}
ERROR_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
    "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
SIGNATURE_DEF_MAP_URL = f"type.googleapis.com/{PACKAGE}.SignatureDefMap"


@dataclass(frozen=True)
class Rpc:
    """One unary method: service, method name, request and response message names."""

    service: str
    method: str
    request: str
    response: str
    api: str  # the name used in the audit log, metrics and token scopes' sense: predict, metadata, ...

    @property
    def path(self) -> str:
        return f"/{PACKAGE}.{self.service}/{self.method}"


RPCS = (
    Rpc("PredictionService", "Predict", "PredictRequest", "PredictResponse", "predict"),
    Rpc("PredictionService", "Classify", "ClassificationRequest", "ClassificationResponse", "classify"),
    Rpc("PredictionService", "Regress", "RegressionRequest", "RegressionResponse", "regress"),
    Rpc("PredictionService", "MultiInference", "MultiInferenceRequest", "MultiInferenceResponse", "multi_inference"),
    Rpc("PredictionService", "GetModelMetadata", "GetModelMetadataRequest", "GetModelMetadataResponse", "metadata"),
    Rpc("ModelService", "GetModelStatus", "GetModelStatusRequest", "GetModelStatusResponse", "status"),
)


def message_class(name: str):  # noqa: ANN201 - a generated protobuf class
    """``"PredictRequest"`` (this package) or ``".tensorflow.TensorProto"`` (a dependency)."""
    return SCHEMA.message_class(name)
