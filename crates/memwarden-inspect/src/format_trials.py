"""memwarden's serialization format trials, run by `memwarden inspect --measure` in a child
Python process (never in memwarden itself).

  format_trials.py save SOURCE FORMAT OUT_DIR   load SOURCE with its usual loader, re-save
                                                it in every format that fits it, print JSON
                                                lines {"format", "path", "file_bytes",
                                                "save_s"} or {"format", "skipped": reason}
  format_trials.py load PATH FORMAT             load PATH the way FORMAT is loaded, print
                                                JSON {"baseline_rss_bytes", "load_s"}; the
                                                caller measures the process's peak around it
"""

import json
import os
import pickle
import sys
import time


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def arrays_of(obj):
    """A dict of name -> numpy array when obj is an array or a flat dict of arrays."""
    import numpy as np

    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return {"array": obj}
    if isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) and v.dtype != object for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    return None


LOADERS = {
    "pickle": "import pickle\nwith open(PATH, 'rb') as f:\n    obj = pickle.load(f)",
    "joblib": "import joblib\nobj = joblib.load(PATH)",
    "joblib-compressed": "import joblib\nobj = joblib.load(PATH)",
    "npy": "import numpy as np\nobj = np.load(PATH)",
    "npz": "import numpy as np\nobj = dict(np.load(PATH))",
    "safetensors": "from safetensors.numpy import load_file\nobj = load_file(PATH)",
    "pytorch": "import torch\nobj = torch.load(PATH, weights_only=True)",
    "skops": "import skops.io as sio\nobj = sio.load(PATH, trusted=sio.get_untrusted_types(file=PATH))",
}


def load(path, fmt):
    scope = {"PATH": path}
    exec(LOADERS[fmt], scope)
    return scope["obj"]


def main():
    mode = sys.argv[1]
    if mode == "load":
        path, fmt, result = sys.argv[2], sys.argv[3], sys.argv[4]
        import numpy  # noqa: F401  (imports are part of the baseline, not of the load)
        if fmt.startswith("joblib"):
            import joblib  # noqa: F401
        baseline = rss()
        started = time.perf_counter()
        obj = load(path, fmt)
        elapsed = time.perf_counter() - started
        with open(result, "w") as f:
            json.dump({"baseline_rss_bytes": baseline, "load_s": elapsed}, f)
        del obj
        return
    source, fmt, out = sys.argv[2], sys.argv[3], sys.argv[4]
    obj = load(source, fmt)
    os.makedirs(out, exist_ok=True)

    def save(name, filename, fn):
        path = os.path.join(out, filename)
        started = time.perf_counter()
        try:
            fn(path)
        except Exception as e:  # a format that does not fit this object
            print(json.dumps({"format": name, "skipped": f"{type(e).__name__}: {e}"}), flush=True)
            return
        print(json.dumps({"format": name, "path": path, "file_bytes": os.path.getsize(path), "save_s": time.perf_counter() - started}), flush=True)

    def dump_pickle(path):
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=5)

    save("pickle", "model.pkl", dump_pickle)
    import joblib

    save("joblib", "model.joblib", lambda p: joblib.dump(obj, p))
    save("joblib-compressed", "model_z3.joblib", lambda p: joblib.dump(obj, p, compress=3))
    arrays = arrays_of(obj)
    if arrays is None:
        for name in ("npy", "npz", "safetensors"):
            print(json.dumps({"format": name, "skipped": "the object is not an array or a flat dict of arrays"}), flush=True)
    else:
        import numpy as np

        if len(arrays) == 1:
            save("npy", "model.npy", lambda p: np.save(p, next(iter(arrays.values()))))
        save("npz", "model.npz", lambda p: np.savez(p, **arrays))
        try:
            from safetensors.numpy import save_file

            save("safetensors", "model.safetensors", lambda p: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, p))
        except ImportError:
            print(json.dumps({"format": "safetensors", "skipped": "safetensors is not installed"}), flush=True)
    try:
        import skops.io as sio

        save("skops", "model.skops", lambda p: sio.dump(obj, p))
    except ImportError:
        print(json.dumps({"format": "skops", "skipped": "skops is not installed"}), flush=True)


main()
