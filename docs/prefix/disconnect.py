# A long shared system prompt; the first streaming request's client closes after the first token
# (`drop`) or stops reading with the connection open (`hold`); then the next request with that
# prompt: prints its prefix-cache hits. Usage: disconnect.py PORT drop|hold
import http.client, json, sys, time, re
port = int(sys.argv[1])
words = ["alpha","bravo","delta","golf","kilo","lima","oscar","papa","quebec","romeo"]
system = "You are a careful assistant. Follow these rules. " + " ".join(f"Rule {i}: always mention {words[i%10]} and {words[(i*3)%10]} when asked." for i in range(150))
def metrics():
    c = http.client.HTTPConnection("127.0.0.1", port); c.request("GET", "/metrics"); t = c.getresponse().read().decode()
    g = lambda k: float(re.search(r"^" + re.escape(k) + r"(\{[^}]*\})? (\S+)$", t, re.M).group(2))
    return g("vllm:prefix_cache_queries_total"), g("vllm:prefix_cache_hits_total"), g("vllm:num_requests_running"), g("vllm:num_requests_waiting")
def body(user, mt, stream):
    d = {"messages":[{"role":"system","content":system},{"role":"user","content":user}],"temperature":0,"stream":stream}
    if mt: d["max_tokens"] = mt
    return json.dumps(d)
mode = sys.argv[2] if len(sys.argv) > 2 else "drop"
t0 = time.time()
c = http.client.HTTPConnection("127.0.0.1", port)
c.request("POST", "/v1/chat/completions", body("Tell me a story about a dragon.", None if mode == "hold" else 200, True), {"content-type":"application/json"})
r = c.getresponse()
buf = b""
while True:
    line = r.fp.readline()
    if not line: break
    if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
        print("first token after %.2fs" % (time.time()-t0)); 
        break
held = c
if mode == "drop":
    c.sock.close() if c.sock else None; c.close()
for _ in range(0 if mode == "hold" else 600):
    q,h,run,wait = metrics()
    if run == 0 and wait == 0: break
    time.sleep(0.1)
q0,h0,run,wait = metrics()
print("before second: running", run, "waiting", wait)
t1 = time.time()
c = http.client.HTTPConnection("127.0.0.1", port)
c.request("POST", "/v1/chat/completions", body("What time is it?", 1, False), {"content-type":"application/json"})
resp = json.loads(c.getresponse().read())
q1,h1,_,_ = metrics()
print("second: %.2fs, prompt_tokens %s, queried %d, hit %d (%.1f%%)" % (time.time()-t1, resp["usage"]["prompt_tokens"], q1-q0, h1-h0, 100*(h1-h0)/max(1,q1-q0)))
