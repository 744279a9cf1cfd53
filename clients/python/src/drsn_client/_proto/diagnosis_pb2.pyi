from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MachineGroup(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MACHINE_GROUP_UNSPECIFIED: _ClassVar[MachineGroup]
    MACHINE_GROUP_LARGE: _ClassVar[MachineGroup]
    MACHINE_GROUP_MEDIUM: _ClassVar[MachineGroup]
    MACHINE_GROUP_SMALL: _ClassVar[MachineGroup]

class Foundation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FOUNDATION_UNSPECIFIED: _ClassVar[Foundation]
    FOUNDATION_RIGID: _ClassVar[Foundation]
    FOUNDATION_FLEXIBLE: _ClassVar[Foundation]

class ResultDetail(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESULT_DETAIL_UNSPECIFIED: _ClassVar[ResultDetail]
    RESULT_DETAIL_COMPACT: _ClassVar[ResultDetail]
    RESULT_DETAIL_FULL: _ClassVar[ResultDetail]

class Condition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONDITION_UNSPECIFIED: _ClassVar[Condition]
    CONDITION_NORMAL: _ClassVar[Condition]
    CONDITION_FAULT: _ClassVar[Condition]
    CONDITION_SENSOR_FAULT: _ClassVar[Condition]
    CONDITION_UNKNOWN: _ClassVar[Condition]

class ConditionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONDITION_REASON_UNSPECIFIED: _ClassVar[ConditionReason]
    CONDITION_REASON_CONDITION: _ClassVar[ConditionReason]
    CONDITION_REASON_CLASS: _ClassVar[ConditionReason]
    CONDITION_REASON_ZONE: _ClassVar[ConditionReason]

class VibrationZone(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIBRATION_ZONE_UNSPECIFIED: _ClassVar[VibrationZone]
    VIBRATION_ZONE_A: _ClassVar[VibrationZone]
    VIBRATION_ZONE_B: _ClassVar[VibrationZone]
    VIBRATION_ZONE_C: _ClassVar[VibrationZone]
    VIBRATION_ZONE_D: _ClassVar[VibrationZone]

class WindowStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WINDOW_STATUS_UNSPECIFIED: _ClassVar[WindowStatus]
    WINDOW_STATUS_OK: _ClassVar[WindowStatus]
    WINDOW_STATUS_UNCERTAIN: _ClassVar[WindowStatus]
    WINDOW_STATUS_INVALID_SIGNAL: _ClassVar[WindowStatus]
    WINDOW_STATUS_SHED: _ClassVar[WindowStatus]

class InvalidReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVALID_REASON_UNSPECIFIED: _ClassVar[InvalidReason]
    INVALID_REASON_FLAT: _ClassVar[InvalidReason]
    INVALID_REASON_CLIPPED: _ClassVar[InvalidReason]
    INVALID_REASON_OUT_OF_RANGE: _ClassVar[InvalidReason]
    INVALID_REASON_MODEL_OUTPUT_NOT_FINITE: _ClassVar[InvalidReason]
    INVALID_REASON_IMPULSIVE: _ClassVar[InvalidReason]
MACHINE_GROUP_UNSPECIFIED: MachineGroup
MACHINE_GROUP_LARGE: MachineGroup
MACHINE_GROUP_MEDIUM: MachineGroup
MACHINE_GROUP_SMALL: MachineGroup
FOUNDATION_UNSPECIFIED: Foundation
FOUNDATION_RIGID: Foundation
FOUNDATION_FLEXIBLE: Foundation
RESULT_DETAIL_UNSPECIFIED: ResultDetail
RESULT_DETAIL_COMPACT: ResultDetail
RESULT_DETAIL_FULL: ResultDetail
CONDITION_UNSPECIFIED: Condition
CONDITION_NORMAL: Condition
CONDITION_FAULT: Condition
CONDITION_SENSOR_FAULT: Condition
CONDITION_UNKNOWN: Condition
CONDITION_REASON_UNSPECIFIED: ConditionReason
CONDITION_REASON_CONDITION: ConditionReason
CONDITION_REASON_CLASS: ConditionReason
CONDITION_REASON_ZONE: ConditionReason
VIBRATION_ZONE_UNSPECIFIED: VibrationZone
VIBRATION_ZONE_A: VibrationZone
VIBRATION_ZONE_B: VibrationZone
VIBRATION_ZONE_C: VibrationZone
VIBRATION_ZONE_D: VibrationZone
WINDOW_STATUS_UNSPECIFIED: WindowStatus
WINDOW_STATUS_OK: WindowStatus
WINDOW_STATUS_UNCERTAIN: WindowStatus
WINDOW_STATUS_INVALID_SIGNAL: WindowStatus
WINDOW_STATUS_SHED: WindowStatus
INVALID_REASON_UNSPECIFIED: InvalidReason
INVALID_REASON_FLAT: InvalidReason
INVALID_REASON_CLIPPED: InvalidReason
INVALID_REASON_OUT_OF_RANGE: InvalidReason
INVALID_REASON_MODEL_OUTPUT_NOT_FINITE: InvalidReason
INVALID_REASON_IMPULSIVE: InvalidReason

class StreamDiagnoseRequest(_message.Message):
    __slots__ = ("open", "chunk")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    open: StreamOpen
    chunk: SampleChunk
    def __init__(self, open: _Optional[_Union[StreamOpen, _Mapping]] = ..., chunk: _Optional[_Union[SampleChunk, _Mapping]] = ...) -> None: ...

class StreamOpen(_message.Message):
    __slots__ = ("machine_id", "sensor_id", "sample_rate_hz", "channels", "hop", "detail", "machine_group", "foundation", "resume_condition", "model", "model_version")
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HOP_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    MACHINE_GROUP_FIELD_NUMBER: _ClassVar[int]
    FOUNDATION_FIELD_NUMBER: _ClassVar[int]
    RESUME_CONDITION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    machine_id: str
    sensor_id: str
    sample_rate_hz: float
    channels: int
    hop: int
    detail: ResultDetail
    machine_group: MachineGroup
    foundation: Foundation
    resume_condition: ConditionCarry
    model: str
    model_version: str
    def __init__(self, machine_id: _Optional[str] = ..., sensor_id: _Optional[str] = ..., sample_rate_hz: _Optional[float] = ..., channels: _Optional[int] = ..., hop: _Optional[int] = ..., detail: _Optional[_Union[ResultDetail, str]] = ..., machine_group: _Optional[_Union[MachineGroup, str]] = ..., foundation: _Optional[_Union[Foundation, str]] = ..., resume_condition: _Optional[_Union[ConditionCarry, _Mapping]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class SampleChunk(_message.Message):
    __slots__ = ("first_sample_index", "f32le", "values", "i16le", "i32le")
    FIRST_SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    F32LE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    I16LE_FIELD_NUMBER: _ClassVar[int]
    I32LE_FIELD_NUMBER: _ClassVar[int]
    first_sample_index: int
    f32le: bytes
    values: FloatSamples
    i16le: IntegerSamples
    i32le: IntegerSamples
    def __init__(self, first_sample_index: _Optional[int] = ..., f32le: _Optional[bytes] = ..., values: _Optional[_Union[FloatSamples, _Mapping]] = ..., i16le: _Optional[_Union[IntegerSamples, _Mapping]] = ..., i32le: _Optional[_Union[IntegerSamples, _Mapping]] = ...) -> None: ...

class IntegerSamples(_message.Message):
    __slots__ = ("data", "scale", "offset", "adc_bits")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ADC_BITS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    scale: float
    offset: float
    adc_bits: int
    def __init__(self, data: _Optional[bytes] = ..., scale: _Optional[float] = ..., offset: _Optional[float] = ..., adc_bits: _Optional[int] = ...) -> None: ...

class FloatSamples(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class StreamDiagnoseResponse(_message.Message):
    __slots__ = ("opened", "window", "discontinuity", "condition")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    DISCONTINUITY_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    opened: StreamOpened
    window: WindowResult
    discontinuity: Discontinuity
    condition: SensorCondition
    def __init__(self, opened: _Optional[_Union[StreamOpened, _Mapping]] = ..., window: _Optional[_Union[WindowResult, _Mapping]] = ..., discontinuity: _Optional[_Union[Discontinuity, _Mapping]] = ..., condition: _Optional[_Union[SensorCondition, _Mapping]] = ...) -> None: ...

class ClassShare(_message.Message):
    __slots__ = ("label", "share")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    label: str
    share: float
    def __init__(self, label: _Optional[str] = ..., share: _Optional[float] = ...) -> None: ...

class SensorCondition(_message.Message):
    __slots__ = ("machine_id", "sensor_id", "condition", "previous", "reason", "fault_class", "shares", "evidence_seconds", "windows", "since_sample", "since_unix_ms", "velocity_rms_mm_s", "zone", "worst_zone", "summary", "carry")
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAULT_CLASS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    SINCE_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    VELOCITY_RMS_MM_S_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    WORST_ZONE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    CARRY_FIELD_NUMBER: _ClassVar[int]
    machine_id: str
    sensor_id: str
    condition: Condition
    previous: Condition
    reason: ConditionReason
    fault_class: str
    shares: _containers.RepeatedCompositeFieldContainer[ClassShare]
    evidence_seconds: float
    windows: int
    since_sample: int
    since_unix_ms: int
    velocity_rms_mm_s: float
    zone: VibrationZone
    worst_zone: VibrationZone
    summary: str
    carry: ConditionCarry
    def __init__(self, machine_id: _Optional[str] = ..., sensor_id: _Optional[str] = ..., condition: _Optional[_Union[Condition, str]] = ..., previous: _Optional[_Union[Condition, str]] = ..., reason: _Optional[_Union[ConditionReason, str]] = ..., fault_class: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[ClassShare, _Mapping]]] = ..., evidence_seconds: _Optional[float] = ..., windows: _Optional[int] = ..., since_sample: _Optional[int] = ..., since_unix_ms: _Optional[int] = ..., velocity_rms_mm_s: _Optional[float] = ..., zone: _Optional[_Union[VibrationZone, str]] = ..., worst_zone: _Optional[_Union[VibrationZone, str]] = ..., summary: _Optional[str] = ..., carry: _Optional[_Union[ConditionCarry, _Mapping]] = ...) -> None: ...

class ConditionCarry(_message.Message):
    __slots__ = ("condition", "fault_class", "evidence", "invalid", "velocity_energy", "velocity_weight", "worst_zone", "since_sample", "since_unix_ms", "windows", "last_sample", "pending", "pending_class", "pending_since")
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    FAULT_CLASS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    VELOCITY_ENERGY_FIELD_NUMBER: _ClassVar[int]
    VELOCITY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    WORST_ZONE_FIELD_NUMBER: _ClassVar[int]
    SINCE_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    LAST_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    PENDING_CLASS_FIELD_NUMBER: _ClassVar[int]
    PENDING_SINCE_FIELD_NUMBER: _ClassVar[int]
    condition: Condition
    fault_class: int
    evidence: _containers.RepeatedScalarFieldContainer[float]
    invalid: float
    velocity_energy: float
    velocity_weight: float
    worst_zone: VibrationZone
    since_sample: int
    since_unix_ms: int
    windows: int
    last_sample: int
    pending: Condition
    pending_class: int
    pending_since: int
    def __init__(self, condition: _Optional[_Union[Condition, str]] = ..., fault_class: _Optional[int] = ..., evidence: _Optional[_Iterable[float]] = ..., invalid: _Optional[float] = ..., velocity_energy: _Optional[float] = ..., velocity_weight: _Optional[float] = ..., worst_zone: _Optional[_Union[VibrationZone, str]] = ..., since_sample: _Optional[int] = ..., since_unix_ms: _Optional[int] = ..., windows: _Optional[int] = ..., last_sample: _Optional[int] = ..., pending: _Optional[_Union[Condition, str]] = ..., pending_class: _Optional[int] = ..., pending_since: _Optional[int] = ...) -> None: ...

class ListMachinesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMachinesResponse(_message.Message):
    __slots__ = ("revision", "machines")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MACHINES_FIELD_NUMBER: _ClassVar[int]
    revision: int
    machines: _containers.RepeatedCompositeFieldContainer[MachineCondition]
    def __init__(self, revision: _Optional[int] = ..., machines: _Optional[_Iterable[_Union[MachineCondition, _Mapping]]] = ...) -> None: ...

class WatchMachinesRequest(_message.Message):
    __slots__ = ("from_revision",)
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    from_revision: int
    def __init__(self, from_revision: _Optional[int] = ...) -> None: ...

class MachineEvent(_message.Message):
    __slots__ = ("revision", "snapshot", "changed", "removed")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    revision: int
    snapshot: ListMachinesResponse
    changed: MachineCondition
    removed: str
    def __init__(self, revision: _Optional[int] = ..., snapshot: _Optional[_Union[ListMachinesResponse, _Mapping]] = ..., changed: _Optional[_Union[MachineCondition, _Mapping]] = ..., removed: _Optional[str] = ...) -> None: ...

class MachineCondition(_message.Message):
    __slots__ = ("machine_id", "condition", "sensor_id", "fault_class", "zone", "velocity_rms_mm_s", "since_unix_ms", "sensors")
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    FAULT_CLASS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    VELOCITY_RMS_MM_S_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    machine_id: str
    condition: Condition
    sensor_id: str
    fault_class: str
    zone: VibrationZone
    velocity_rms_mm_s: float
    since_unix_ms: int
    sensors: _containers.RepeatedCompositeFieldContainer[SensorState]
    def __init__(self, machine_id: _Optional[str] = ..., condition: _Optional[_Union[Condition, str]] = ..., sensor_id: _Optional[str] = ..., fault_class: _Optional[str] = ..., zone: _Optional[_Union[VibrationZone, str]] = ..., velocity_rms_mm_s: _Optional[float] = ..., since_unix_ms: _Optional[int] = ..., sensors: _Optional[_Iterable[_Union[SensorState, _Mapping]]] = ...) -> None: ...

class SensorState(_message.Message):
    __slots__ = ("sensor_id", "condition", "fault_class", "shares", "evidence_seconds", "since_sample", "since_unix_ms", "velocity_rms_mm_s", "zone", "worst_zone", "streaming")
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    FAULT_CLASS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SINCE_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    VELOCITY_RMS_MM_S_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    WORST_ZONE_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    sensor_id: str
    condition: Condition
    fault_class: str
    shares: _containers.RepeatedCompositeFieldContainer[ClassShare]
    evidence_seconds: float
    since_sample: int
    since_unix_ms: int
    velocity_rms_mm_s: float
    zone: VibrationZone
    worst_zone: VibrationZone
    streaming: bool
    def __init__(self, sensor_id: _Optional[str] = ..., condition: _Optional[_Union[Condition, str]] = ..., fault_class: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[ClassShare, _Mapping]]] = ..., evidence_seconds: _Optional[float] = ..., since_sample: _Optional[int] = ..., since_unix_ms: _Optional[int] = ..., velocity_rms_mm_s: _Optional[float] = ..., zone: _Optional[_Union[VibrationZone, str]] = ..., worst_zone: _Optional[_Union[VibrationZone, str]] = ..., streaming: bool = ...) -> None: ...

class StreamOpened(_message.Message):
    __slots__ = ("model_name", "model_version", "window", "hop", "model_sample_rate_hz", "resampled", "classes", "condition")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    HOP_FIELD_NUMBER: _ClassVar[int]
    MODEL_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    RESAMPLED_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    window: int
    hop: int
    model_sample_rate_hz: float
    resampled: bool
    classes: _containers.RepeatedScalarFieldContainer[str]
    condition: SensorCondition
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., window: _Optional[int] = ..., hop: _Optional[int] = ..., model_sample_rate_hz: _Optional[float] = ..., resampled: bool = ..., classes: _Optional[_Iterable[str]] = ..., condition: _Optional[_Union[SensorCondition, _Mapping]] = ...) -> None: ...

class Discontinuity(_message.Message):
    __slots__ = ("expected", "received", "samples_discarded")
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_DISCARDED_FIELD_NUMBER: _ClassVar[int]
    expected: int
    received: int
    samples_discarded: int
    def __init__(self, expected: _Optional[int] = ..., received: _Optional[int] = ..., samples_discarded: _Optional[int] = ...) -> None: ...

class WindowResult(_message.Message):
    __slots__ = ("window_index", "first_sample_index", "last_sample_index", "label", "class_index", "confidence", "probabilities", "noise_score", "shrinkage", "model_name", "model_version", "queue_us", "inference_us", "total_us", "status", "invalid_reason", "status_detail", "velocity_rms_mm_s", "zone", "ood_score", "out_of_distribution")
    WINDOW_INDEX_FIELD_NUMBER: _ClassVar[int]
    FIRST_SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    NOISE_SCORE_FIELD_NUMBER: _ClassVar[int]
    SHRINKAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INVALID_REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_DETAIL_FIELD_NUMBER: _ClassVar[int]
    VELOCITY_RMS_MM_S_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    OOD_SCORE_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    window_index: int
    first_sample_index: int
    last_sample_index: int
    label: str
    class_index: int
    confidence: float
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    noise_score: float
    shrinkage: _containers.RepeatedScalarFieldContainer[float]
    model_name: str
    model_version: str
    queue_us: int
    inference_us: int
    total_us: int
    status: WindowStatus
    invalid_reason: InvalidReason
    status_detail: str
    velocity_rms_mm_s: float
    zone: VibrationZone
    ood_score: float
    out_of_distribution: bool
    def __init__(self, window_index: _Optional[int] = ..., first_sample_index: _Optional[int] = ..., last_sample_index: _Optional[int] = ..., label: _Optional[str] = ..., class_index: _Optional[int] = ..., confidence: _Optional[float] = ..., probabilities: _Optional[_Iterable[float]] = ..., noise_score: _Optional[float] = ..., shrinkage: _Optional[_Iterable[float]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., queue_us: _Optional[int] = ..., inference_us: _Optional[int] = ..., total_us: _Optional[int] = ..., status: _Optional[_Union[WindowStatus, str]] = ..., invalid_reason: _Optional[_Union[InvalidReason, str]] = ..., status_detail: _Optional[str] = ..., velocity_rms_mm_s: _Optional[float] = ..., zone: _Optional[_Union[VibrationZone, str]] = ..., ood_score: _Optional[float] = ..., out_of_distribution: bool = ...) -> None: ...

class DiagnoseRequest(_message.Message):
    __slots__ = ("windows", "detail", "model", "model_version")
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[Window]
    detail: ResultDetail
    model: str
    model_version: str
    def __init__(self, windows: _Optional[_Iterable[_Union[Window, _Mapping]]] = ..., detail: _Optional[_Union[ResultDetail, str]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class Window(_message.Message):
    __slots__ = ("f32le", "values")
    F32LE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    f32le: bytes
    values: FloatSamples
    def __init__(self, f32le: _Optional[bytes] = ..., values: _Optional[_Union[FloatSamples, _Mapping]] = ...) -> None: ...

class DiagnoseResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[WindowResult]
    def __init__(self, results: _Optional[_Iterable[_Union[WindowResult, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "architecture", "classes", "window", "channels", "sample_rate_hz", "default_hop", "sha256", "device", "card_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HOP_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    architecture: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    window: int
    channels: int
    sample_rate_hz: float
    default_hop: int
    sha256: str
    device: str
    card_json: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., architecture: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., window: _Optional[int] = ..., channels: _Optional[int] = ..., sample_rate_hz: _Optional[float] = ..., default_hop: _Optional[int] = ..., sha256: _Optional[str] = ..., device: _Optional[str] = ..., card_json: _Optional[str] = ...) -> None: ...
