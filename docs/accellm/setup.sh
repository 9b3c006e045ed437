# Sourced by the scripts beside it: the cluster, model and SLO every AcceLLM run shares.
# Knob variants are the TOML files in docs/accellm/knobs/.
COMMON="--model llama2-70b --tp 8 --instances 16 --num-requests 4000 --ttft-slo-ms 2000 --tbt-slo-ms 200"
