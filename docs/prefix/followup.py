# Multi-turn chat against a running `accellm serve` on PORT: each follow-up resends the model's own
# answers; prints the prompt tokens the follow-ups looked up and hit. Usage: followup.py PORT
import http.client, json, sys, re
port = int(sys.argv[1])
def post(path, d):
    c = http.client.HTTPConnection("127.0.0.1", port); c.request("POST", path, json.dumps(d), {"content-type":"application/json"}); return json.loads(c.getresponse().read())
def metrics():
    c = http.client.HTTPConnection("127.0.0.1", port); c.request("GET", "/metrics"); t = c.getresponse().read().decode()
    g = lambda k: float(re.search(r"^" + re.escape(k) + r"(\{[^}]*\})? (\S+)$", t, re.M).group(2))
    return g("vllm:prefix_cache_queries_total"), g("vllm:prefix_cache_hits_total")
tot_q = tot_h = 0
for conv in range(4):
    msgs = [{"role":"system","content":"You are a helpful assistant who answers in full sentences."}]
    for turn, q in enumerate(["Tell me about the history of the city of %s." % c for c in ["Rome","Paris","Cairo","Lima"]][conv:conv+1] + ["What happened next?", "Summarise that in three points."]):
        msgs.append({"role":"user","content":q})
        q0,h0 = metrics()
        r = post("/v1/chat/completions", {"messages":msgs, "max_tokens":120, "temperature":0})
        q1,h1 = metrics()
        if turn > 0: tot_q += q1-q0; tot_h += h1-h0
        print("conv %d turn %d: prompt %d, hit %d" % (conv, turn, q1-q0, h1-h0))
        msgs.append({"role":"assistant","content":r["choices"][0]["message"]["content"]})
print("follow-ups: hit %d of %d prompt tokens (%.1f%%)" % (tot_h, tot_q, 100*tot_h/max(1,tot_q)))
