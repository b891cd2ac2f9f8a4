"""Runtime adapters, looked up by the ``adapter = "..."`` value of a device file.

Values are ``"module:Class"`` strings so that a runtime's heavy packages load only when a device
using it is opened. Add a runtime with one line here (see docs/adapters.md).
"""

from __future__ import annotations

ADAPTERS: dict[str, str] = {
    "cpu-ort": "compofa_bench.adapters.ort_cpu:OrtCpuAdapter",
    "cuda-torch": "compofa_bench.adapters.cuda_torch:CudaTorchAdapter",
    "tensorrt": "compofa_bench.adapters.tensorrt:TensorRTAdapter",
    "tflite-local": "compofa_bench.adapters.tflite_local:TfliteLocalAdapter",
    "android-adb": "compofa_bench.adapters.android_adb:AndroidAdbAdapter",
}
