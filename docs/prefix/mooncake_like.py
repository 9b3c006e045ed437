"""A Mooncake-format trace (JSONL: timestamp ms, input_length, output_length, hash_ids of
512-token blocks) shaped like Mooncake's conversation trace: 12,031 requests over ~1 h, a
shared first block (id 0), long prompts, and follow-up turns that resend the conversation so
far (its hash ids) plus new blocks. Seeded, for timing the simulator's prefix cache."""
import json, random, sys
rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 12031
next_id = 1
convs = []  # (hash_ids, input_length)
t = 0
out = []
for i in range(n):
    t += int(rng.expovariate(1 / 300.0))  # ~3.3 req/s
    if convs and rng.random() < 0.45:
        k = rng.randrange(len(convs))
        ids, length = convs[k]
        add = max(1, int(rng.lognormvariate(6.5, 1.0)))
        length = length + add
        nb = (length + 511) // 512
        ids = ids + list(range(next_id, next_id + nb - len(ids)))
        next_id += nb - len(convs[k][0])
        convs[k] = (ids, length)
    else:
        length = max(600, min(120000, int(rng.lognormvariate(8.9, 0.8))))
        nb = (length + 511) // 512
        ids = [0] + list(range(next_id, next_id + nb - 1))
        next_id += nb - 1
        convs.append((ids, length))
        if len(convs) > 400:
            convs.pop(0)
    outlen = max(1, min(2000, int(rng.lognormvariate(5.6, 0.7))))
    out.append({"timestamp": t, "input_length": length, "output_length": outlen, "hash_ids": ids})
for r in out:
    print(json.dumps(r))
