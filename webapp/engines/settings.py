"""How a process serves models: ``ENGINE`` × ``QUANTIZE`` and the settings beside them
(``EngineSettings``), and which combinations go together (``check_combination``).

ENGINE × QUANTIZE:

=============  ============================  ===========================================
ENGINE         QUANTIZE=none / bf16          QUANTIZE=static (int8)
=============  ============================  ===========================================
openvino       the ONNX network, fp32; bf16  the QDQ int8 network, compiled by OpenVINO
               where the CPU computes it
onnxruntime    the ONNX network, fp32        the QDQ int8 network (ORT's quantizer)
torch          fp32 eager (``dynamic``: int8  FX graph mode, x86 backend, calibrated
               Linear layers)
=============  ============================  ===========================================

``ENGINE=torch`` (and ``QUANTIZE=dynamic``, torch's own) is the one setting that loads
torch into a worker (``torch_engine``); it serves the same cards.
"""

from __future__ import annotations

from dataclasses import dataclass

from webapp.checkpoints.loaded import ModelLoadError
from webapp.config import choices, combination_problem, setting
from webapp.engines.artefacts import ArtefactCache, default_cache_dir

ENGINES = choices("ENGINE")
QUANTIZE_MODES = choices("QUANTIZE")


def check_combination(engine: str, mode: str) -> None:
    """``ModelLoadError`` naming the settings that cannot go together."""
    if engine not in ENGINES:
        raise ModelLoadError(f"ENGINE={engine!r} is not supported; use one of "
                             f"{', '.join(ENGINES)}")
    if mode not in QUANTIZE_MODES:
        raise ModelLoadError(f"QUANTIZE={mode!r} is not supported; use one of "
                             f"{', '.join(QUANTIZE_MODES)}")
    problem = combination_problem(engine, mode)
    if problem:
        raise ModelLoadError(problem)


@dataclass(frozen=True)
class EngineSettings:
    """How this process serves models (``ENGINE``, ``QUANTIZE``, ``ENGINE_CACHE_DIR``,
    ``CALIBRATION_DIR``, ``TORCH_THREADS``).  ``engine="auto"``: OpenVINO or ONNX
    Runtime, whichever the trials measure faster here (``precision.decide``).  The
    server's come from its settings (``from_config``: the table's defaults); the field
    defaults here are for code that builds settings by hand (a command line, a test:
    OpenVINO in fp32, nothing measured)."""

    engine: str = "openvino"
    quantize: str = "none"
    cache_dir: str = ""
    calibration_dir: str = ""
    threads: int = 1
    dual: bool = False  # ENGINE_STREAMS=dual (OpenVINO)
    min_agreement: float = 0.98  # QUANTIZE=auto: INT8_MIN_AGREEMENT
    max_score_change: float = 0.01  # QUANTIZE=auto: PRECISION_MAX_SCORE_CHANGE
    handicap: str = ""  # AUTO_HANDICAP_MS: ms added to some candidates' timed passes

    @classmethod
    def from_config(cls, values: dict) -> EngineSettings:
        """From the app's config (``Config.from_env``); a setting it lacks takes the
        table's default (webapp/config.py), as the server would."""
        def get(name: str):
            return values[name] if values.get(name) is not None else setting(name, {})

        return cls(engine=get("ENGINE"), quantize=get("QUANTIZE"),
                   cache_dir=get("ENGINE_CACHE_DIR"), calibration_dir=get("CALIBRATION_DIR"),
                   threads=max(1, int(get("TORCH_THREADS") or 1)),
                   dual=get("ENGINE_STREAMS") == "dual",
                   min_agreement=float(get("INT8_MIN_AGREEMENT")),
                   max_score_change=float(get("PRECISION_MAX_SCORE_CHANGE")),
                   handicap=get("AUTO_HANDICAP_MS"))

    @property
    def builds_int8(self) -> bool:
        """Serving needs the ONNX int8 network (torch quantizes by itself)."""
        return self.quantize == "static" and self.engine != "torch"

    @property
    def decides(self) -> bool:
        """QUANTIZE=auto or ENGINE=auto (not torch, which serves what it is told): the
        engine and precision are decided per model by measuring (``precision.decide``)."""
        return (self.quantize == "auto" or self.engine == "auto") and self.engine != "torch"

    @property
    def cache(self) -> ArtefactCache:
        return ArtefactCache(self.cache_dir or default_cache_dir())
