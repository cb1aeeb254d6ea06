"""Reports, typed: ``memwarden.Report.load("out/report.json")``.

Every key of the report schema (``docs/report-schema.md``, ``memwarden.report/1``) is an
attribute; keys a newer memwarden adds are kept in ``extra``, and keys an older report
lacks take their documented default. Names (files, functions, command lines) are text in
memwarden's escaping scheme: :meth:`StackFrame.file_bytes` and :func:`decode` give the
bytes back, through the same code the Rust side escapes with.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Optional, Tuple, Union, get_args, get_origin, get_type_hints

from . import _native


def decode(name: str) -> bytes:
    """The bytes a report's name stands for (``caf\\xe9.py`` → ``b'caf\\xe9.py'``)."""
    return _native.unescape(name)


def decode_path(name: str) -> str:
    """A report's file name as a path for ``open`` (``os.fsdecode`` of its bytes)."""
    return os.fsdecode(decode(name))


@dataclass
class StackFrame:
    file: str
    line: int
    function: str
    imports: Optional[str] = None

    def file_bytes(self) -> bytes:
        return decode(self.file)

    def __str__(self) -> str:
        """``file:line function``, the file's name decoded."""
        return f"{decode_path(self.file)}:{self.line} {self.function}"


@dataclass
class StackBytes:
    stack: List[StackFrame]
    bytes: int
    requested_bytes: Optional[int] = None
    reserved_bytes: Optional[int] = None


@dataclass
class LineAllocations:
    frame: StackFrame
    allocated_bytes: int
    allocations: int


@dataclass
class LineStats:
    frame: StackFrame
    peak_bytes: int
    small_object_bytes: int
    leaked_bytes: int
    allocated_bytes: int
    allocations: int


@dataclass
class SourceLine:
    file: str
    line: int
    text: str


@dataclass
class MallocFigures:
    free_bytes: int
    arena_bytes: int
    mmapped_bytes: int


@dataclass
class TimelineStackBytes:
    stack_id: int
    bytes: int


@dataclass
class HeapTimelinePoint:
    t_s: float
    heap_bytes: int
    top: List[TimelineStackBytes]


@dataclass
class Profile:
    mode: str
    sample_bytes: Optional[int]
    peak_bytes: int
    leaked_bytes: int
    allocated_bytes: int
    peak_error_bytes: int
    at_peak: List[StackBytes]
    leaked: List[StackBytes]
    top_lines: List[LineAllocations]
    processes_profiled: int
    dropped_allocations: int
    requested_peak_bytes: int = 0
    reserved_bytes: int = 0
    peak_method: str = "summed"
    peak_at_s: Optional[float] = None
    at_peak_bytes: int = 0
    at_peak_gap_s: Optional[float] = None
    timeline: List[HeapTimelinePoint] = field(default_factory=list)
    timeline_stacks: List[List[StackFrame]] = field(default_factory=list)
    lines: List[LineStats] = field(default_factory=list)
    flame_at_peak: List[StackBytes] = field(default_factory=list)
    flame_leaked: List[StackBytes] = field(default_factory=list)
    source_lines: List[SourceLine] = field(default_factory=list)
    malloc_at_peak: Optional[MallocFigures] = None


@dataclass
class ProcessProfile:
    python: Optional[str]
    peak_bytes: int
    peak_at_s: Optional[float]
    leaked_bytes: int
    exited_cleanly: bool
    at_peak: List[StackBytes]
    leaked: List[StackBytes]
    requested_peak_bytes: int = 0
    reserved_bytes: int = 0


@dataclass
class Process:
    pid: int
    ppid: int
    cmdline: List[str]
    first_seen_s: float
    last_seen_s: float
    exit_code: Optional[int]
    exit_signal: Optional[int]
    peak_rss_bytes: Optional[int]
    peak_rss_source: Optional[str]
    peak_rss_unmeasured: Optional[str] = None
    peak_pss_bytes: Optional[int] = None
    peak_uss_bytes: Optional[int] = None
    peak_anon_bytes: Optional[int] = None
    peak_file_bytes: Optional[int] = None
    peak_shmem_bytes: Optional[int] = None
    peak_gpu_bytes: Optional[int] = None
    profile: Optional[ProcessProfile] = None


@dataclass
class Exit:
    code: Optional[int]
    signal: Optional[int]
    signal_name: Optional[str]
    oom_killed: bool
    oom_killed_by: Optional[str]
    oom_at_bytes: Optional[int]
    memwarden_exit_code: int
    interrupted: Optional[str] = None


@dataclass
class Peak:
    rss_bytes: int
    source: str
    pss_bytes: Optional[int]
    uss_bytes: Optional[int]
    anon_bytes: Optional[int]
    file_bytes: Optional[int]
    shmem_bytes: Optional[int]
    cgroup_bytes: Optional[int]
    heap_bytes: Optional[int]
    gpu_bytes: Optional[int]
    at_s: float
    pid: Optional[int]
    sources: Dict[str, str]


@dataclass
class Limits:
    cgroup_version: Optional[int]
    cgroup_path: Optional[str]
    cgroup_limit_bytes: Optional[int]
    cgroup_usage_at_start_bytes: Optional[int]
    cgroup_oom_kills_during_run: Optional[int]
    system_total_bytes: int
    system_available_at_start_bytes: int
    tightest_limit_bytes: int
    tightest_limit_source: str
    headroom_bytes: int


@dataclass
class Budget:
    limit_bytes: Optional[int]
    metric: str
    status: str
    hard_limit_bytes: Optional[int]
    enforced_by: str
    enforcement_note: Optional[str]


@dataclass
class GpuDevice:
    index: int
    name: str
    total_bytes: int
    peak_tree_bytes: int


@dataclass
class Gpu:
    status: str
    reason: Optional[str]
    devices: List[GpuDevice]


@dataclass
class MonitorInfo:
    interval_ms: int
    samples: int
    self_cpu_s: float
    self_cpu_share: float
    own_cgroup: bool


@dataclass
class TimelinePoint:
    t_s: float
    rss_bytes: int
    pss_bytes: int
    uss_bytes: int
    anon_bytes: int
    file_bytes: int
    shmem_bytes: int
    cgroup_bytes: Optional[int]
    gpu_bytes: Optional[int]
    processes: int


@dataclass
class ModelRun:
    name: str
    version: str
    stage: str
    run_id: str


@dataclass
class Advice:
    technique: str
    rule: str
    frame: Optional[StackFrame]
    evidence: str
    saving_bytes: Optional[int]
    saving_basis: str
    fix: str
    source: Optional[str] = None


@dataclass
class Report:
    schema: str
    memwarden_version: str
    command: List[str]
    cwd: str
    started_at_unix_s: float
    duration_s: float
    exit: Exit
    peak: Peak
    limits: Limits
    budget: Budget
    gpu: Gpu
    monitor: MonitorInfo
    processes: List[Process]
    timeline: List[TimelinePoint]
    warnings: List[str]
    profile: Optional[Profile] = None
    advice: List[Advice] = field(default_factory=list)
    model: Optional[ModelRun] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "Report":
        """Reads a JSON report (``memwarden run --json``), or the report kept beside a
        directory of captures (``--capture-dir``), its profile analysed again from them as
        ``memwarden report --capture-dir`` does (every figure made from the profile with it:
        the heap peak, each process's profile, the advice)."""
        if os.path.isdir(path):
            return cls.from_json(_native.kept_report(os.fspath(path)))
        with open(path, "rb") as report:
            return cls.from_json(report.read())

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> "Report":
        data = json.loads(text)
        if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("memwarden.report/"):
            raise ValueError("not a memwarden run report (no `schema: memwarden.report/N`)")
        return _build(cls, data)


@functools.lru_cache(maxsize=None)
def _fields(kind: type) -> Tuple[Dict[str, Any], FrozenSet[str]]:
    """A report dataclass's field types and names, worked out once per class (a report
    holds thousands of frames)."""
    hints = get_type_hints(kind, vars(sys.modules[__name__]))
    return hints, frozenset(f.name for f in dataclasses.fields(kind))


def _build(kind: Any, value: Any) -> Any:
    """`value` (parsed JSON) as `kind`, a dataclass, list, dict, optional or plain type."""
    origin = get_origin(kind)
    if origin is Union:
        if value is None:
            return None
        inner = [a for a in get_args(kind) if a is not type(None)]
        return _build(inner[0], value)
    if origin in (list, List):
        return [_build(get_args(kind)[0], item) for item in value]
    if origin in (dict, Dict):
        return {k: _build(get_args(kind)[1], v) for k, v in value.items()}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        hints, known = _fields(kind)
        arguments = {k: _build(hints[k], v) for k, v in value.items() if k in known}
        if "extra" in known:
            arguments["extra"] = {k: v for k, v in value.items() if k not in known}
        try:
            return kind(**arguments)
        except TypeError as e:
            raise ValueError(f"a report's {kind.__name__} lacks a key: {e}") from None
    if kind is float and isinstance(value, int):
        return float(value)
    return value
