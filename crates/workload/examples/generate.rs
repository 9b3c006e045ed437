//! Generates a workload from a short source string and prints its size, rate and the time it
//! took: `cargo run --release -p accellm-workload --example generate -- SOURCE [N] [ARRIVALS]`,
//! e.g. `... -- "synthetic:prompt=lognormal(1000,1),output=uniform(1,512)" 1000000 gamma:100:2`.

use std::time::Instant;

use accellm_workload::{SloClass, SloPolicy, WorkloadSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let source = args.next().unwrap_or_else(|| "sharegpt".to_string());
    let mut spec = WorkloadSpec::new(source.parse()?);
    if let Some(n) = args.next() {
        spec.max_requests = Some(n.parse()?);
    }
    if let Some(a) = args.next() {
        spec.arrivals = Some(a.parse()?);
    }
    spec.slo = SloPolicy::Classes {
        classes: SloClass::defaults(),
    };
    let t = Instant::now();
    let w = spec.generate()?;
    let elapsed = t.elapsed();
    let n = w.requests.len().max(1) as f64;
    let mean_prompt = w
        .requests
        .iter()
        .map(|r| r.prompt_tokens as f64)
        .sum::<f64>()
        / n;
    let mean_output = w
        .requests
        .iter()
        .map(|r| r.output_tokens as f64)
        .sum::<f64>()
        / n;
    println!("{}", w.description);
    println!(
        "requests {}, span {:.1} s, mean rate {:?} req/s, mean prompt {mean_prompt:.1}, mean output {mean_output:.1}",
        w.requests.len(),
        w.duration_s(),
        w.mean_rate()
    );
    println!("generated in {:.3} s", elapsed.as_secs_f64());
    Ok(())
}
