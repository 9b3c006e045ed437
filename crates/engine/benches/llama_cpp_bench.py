#!/usr/bin/env python3
"""llama.cpp side of the engine comparison, through the PyPI package llama-cpp-python.

Install (builds llama.cpp from source, 8-15 min on 2 cores). A native build (-DGGML_NATIVE=ON)
crashed with SIGILL on the first decode on this machine; this explicit-flags build works:
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
      -DGGML_AMX_BF16=OFF" python3 -m pip install llama-cpp-python==0.3.36
Run:
    python3 llama_cpp_bench.py MODEL.gguf [THREADS ...]

Prints, per thread count, prefill tokens/s for 128- and 512-token prompts and single-stream
decode tokens/s (context 128), with the process CPU time per iteration next to each wall time
(the CPU time of a one-thread run estimates its idle-machine wall time when the machine is busy).
"""
import json
import sys
import time

import llama_cpp


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3


def bench(path, threads):
    llm = llama_cpp.Llama(
        model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=1024,
        n_batch=512, n_ubatch=512, verbose=False, use_extra_bufts=False,
    )
    vocab = llm.n_vocab()
    toks = [(i * 7919 + 13) % vocab for i in range(600)]
    rows = []
    llm.reset()
    llm.eval(toks[:16])  # warm-up
    for n in (128, 512):
        best = None
        for _ in range(2):
            llm.reset()
            w, c = timed(lambda: llm.eval(toks[:n]))
            if best is None or w < best[0]:
                best = (w, c)
        rows.append({"threads": threads, "kind": "prefill", "size": n, "ms_per_iter": best[0],
                     "cpu_ms_per_iter": best[1], "tokens_per_s": n / best[0] * 1e3})
    llm.reset()
    llm.eval(toks[:128])
    steps = 24
    ws, cs = [], []
    for i in range(steps):
        w, c = timed(lambda: llm.eval([toks[200 + i]]))
        ws.append(w)
        cs.append(c)
    ws.sort()
    cs.sort()
    w, c = ws[steps // 2], cs[steps // 2]
    rows.append({"threads": threads, "kind": "decode", "size": 1, "ms_per_iter": w,
                 "cpu_ms_per_iter": c, "tokens_per_s": 1e3 / w})
    return rows


def main():
    path = sys.argv[1]
    threads = [int(t) for t in sys.argv[2:]] or [1, 2]
    rows = [r for t in threads for r in bench(path, t)]
    for r in rows:
        print(f"llama.cpp {r['threads']}t {r['kind']:<8} {r['size']:>4}: {r['ms_per_iter']:9.2f} ms "
              f"({r['tokens_per_s']:7.1f} tok/s), cpu {r['cpu_ms_per_iter']:9.2f} ms", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
