"""The machine rnnc runs on: its CPU model, the instruction set the kernels may use, and the
cache sizes they block for, read at run time (never assumed from the CPU the code was tuned on).

- Instruction set: the best of AVX-512F, AVX2 + FMA and baseline (portable C and BLAS) that
  the CPU runs, capped by the environment variable ``RNNC_MAX_CPU_ISA`` (``avx512``, ``avx2``
  or ``baseline``; the convention of oneDNN's ``ONEDNN_MAX_CPU_ISA``), read once.
- Caches: /sys/devices/system/cpu/cpu0/cache (Linux), else sysconf, else typical sizes (said
  by ``source``).

Every kernel module keeps its own copy of these settings (rnnc/_kernels/_cpu.h), set when it
is imported (``attach``); ``use`` changes them for a test. Plans are made per machine setting
(rnnc/_engine/plan.py keys them by ``current().key``).
"""
import contextlib
import dataclasses
import os
import re
import threading

ISAS = ("baseline", "avx2", "avx512")      # index = the kernels' level (_cpu.h RNNC_ISA_*)
ENV_ISA = "RNNC_MAX_CPU_ISA"
_DEFAULT_CACHES = {"l1d": 32 << 10, "l2": 1 << 20, "l3": 16 << 20}


@dataclasses.dataclass(frozen=True)
class Machine:
    model: str              # the CPU's model name, as lscpu prints it
    supported: str          # the best instruction set the CPU runs (an ISAS name)
    isa: str                # the one the kernels use: supported, capped by RNNC_MAX_CPU_ISA
    cap: str                # the cap asked for ("" if none)
    l1d: int                # bytes of one core's L1 data cache
    l2: int                 # bytes of one core's L2
    l3: int                 # bytes of the L3 (shared)
    source: str             # where the cache sizes come from: "sysfs", "sysconf" or "default"
    cpus: int               # CPUs this process may run on

    @property
    def level(self):
        return ISAS.index(self.isa)

    @property
    def key(self):
        """What plans depend on: the instruction set and the caches."""
        return (self.isa, self.l1d, self.l2, self.l3)

    @property
    def slug(self):
        """The model name as a folder name: 'AMD EPYC 7B13' -> 'amd-epyc-7b13'."""
        return slug(self.model)


def slug(model):
    text = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$|\bprocessor\b", " ", model.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown-cpu"


def _cpuinfo():
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("", set()) elsewhere."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and not model:
                    model = " ".join(value.split())
                elif name == "flags" and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def _supported(flags):
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2"
    return "baseline"


def parse_cap(value):
    """The instruction set RNNC_MAX_CPU_ISA asks for ("" if unset or empty)."""
    text = (value or "").strip().lower()
    if text in ("", *ISAS):
        return text
    aliases = {"avx512_core": "avx512", "avx2_fma": "avx2", "default": "baseline",
               "sse41": "baseline", "none": "baseline"}
    if text in aliases:
        return aliases[text]
    raise ValueError(f"{ENV_ISA} must be one of 'avx512', 'avx2' or 'baseline', "
                     f"got {value!r}")


def _size(text):
    """'1024K' / '32 MiB' / '1048576' -> bytes (None if not a size)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(i?B)?\s*", text or "", re.IGNORECASE)
    if not m:
        return None
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def read_caches(root="/sys/devices/system/cpu/cpu0/cache"):
    """({"l1d", "l2", "l3"} bytes, source). A cache level the system does not report takes
    the next level's size divided as it is in typical CPUs, or a typical size."""
    sizes = {}
    try:
        for entry in sorted(os.listdir(root)):
            if not entry.startswith("index"):
                continue
            path = os.path.join(root, entry)
            with open(os.path.join(path, "level")) as f:
                level = int(f.read())
            with open(os.path.join(path, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(path, "size")) as f:
                size = _size(f.read())
            if size and kind in ("Data", "Unified"):
                sizes.setdefault(f"l{level}" + ("d" if level == 1 else ""), size)
    except (OSError, ValueError):
        sizes = {}
    source = "sysfs"
    if not sizes.get("l2"):
        source = "sysconf"
        for key, name in (("l1d", "SC_LEVEL1_DCACHE_SIZE"), ("l2", "SC_LEVEL2_CACHE_SIZE"),
                          ("l3", "SC_LEVEL3_CACHE_SIZE")):
            try:
                value = os.sysconf(name)
            except (ValueError, OSError, AttributeError):
                value = 0
            if value and value > 0:
                sizes[key] = int(value)
    if not sizes.get("l2"):
        source = "default"
    for key, value in _DEFAULT_CACHES.items():
        sizes.setdefault(key, value)
    return {k: sizes[k] for k in ("l1d", "l2", "l3")}, source


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read(environ=None):
    """The machine as read now (RNNC_MAX_CPU_ISA from `environ`, default os.environ)."""
    environ = os.environ if environ is None else environ
    model, flags = _cpuinfo()
    supported = _supported(flags)
    cap = parse_cap(environ.get(ENV_ISA))
    isa = supported
    if cap and ISAS.index(cap) < ISAS.index(supported):
        isa = cap
    caches, source = read_caches()
    return Machine(model=model or "unknown CPU", supported=supported, isa=isa, cap=cap,
                   source=source, cpus=_cpus(), **caches)


_lock = threading.Lock()
_state = {"machine": None}
_configures = []        # each kernel module's _configure


def current():
    """The machine the kernels are configured for (read on first use)."""
    machine = _state["machine"]
    if machine is None:
        with _lock:
            if _state["machine"] is None:
                _state["machine"] = read()
            machine = _state["machine"]
    return machine


def attach(configure):
    """Called by each kernel module when imported (rnnc/_kernels/_configure.pxi): configure
    it now and whenever the settings change."""
    machine = current()
    with _lock:
        _configures.append(configure)
        used = configure(machine.level, machine.l1d, machine.l2, machine.l3)
    if used != machine.level:       # the CPU refused what /proc/cpuinfo promised
        _set(dataclasses.replace(machine, isa=ISAS[used], supported=ISAS[used]))


def _set(machine):
    with _lock:
        _state["machine"] = machine
        for configure in _configures:
            configure(machine.level, machine.l1d, machine.l2, machine.l3)


@contextlib.contextmanager
def use(isa=None, l1d=None, l2=None, l3=None):
    """Run the kernels with another instruction set (at most the CPU's) or cache sizes until
    the block ends: for tests, which must not run kernels on other threads meanwhile."""
    before = current()
    changes = {k: v for k, v in (("l1d", l1d), ("l2", l2), ("l3", l3)) if v is not None}
    if isa is not None:
        isa = parse_cap(isa) or before.supported
        if ISAS.index(isa) > ISAS.index(before.supported):
            raise ValueError(f"this CPU ({before.model}) runs at most {before.supported}, "
                             f"not {isa}")
        changes["isa"] = isa
    _set(dataclasses.replace(before, **changes))
    try:
        yield current()
    finally:
        _set(before)
