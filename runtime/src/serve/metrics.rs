//! What `GET /metrics` reports, in Prometheus' text format.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    pub prompt_tokens: Counter,
    pub prompt_tokens_cached: Counter,
    pub generated_tokens: Counter,
    pub requests: Counter,
    pub rejected: Counter,
    pub cancelled: Counter,
    pub requests_running: Gauge,
    pub requests_waiting: Gauge,
    pub kv_cells_used: Gauge,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
}

impl Metrics {
    pub fn new(kv_cells: usize) -> Metrics {
        let mut registry = Registry::with_prefix("mcc");
        let m = Metrics {
            prompt_tokens: Counter::default(),
            prompt_tokens_cached: Counter::default(),
            generated_tokens: Counter::default(),
            requests: Counter::default(),
            rejected: Counter::default(),
            cancelled: Counter::default(),
            requests_running: Gauge::default(),
            requests_waiting: Gauge::default(),
            kv_cells_used: Gauge::default(),
            time_to_first_token: Histogram::new([
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            time_per_output_token: Histogram::new([
                0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5,
            ]),
            registry: Registry::default(),
        };
        let kv_total = Gauge::<i64>::default();
        kv_total.set(kv_cells as i64);
        let r = &mut registry;
        r.register(
            "prompt_tokens",
            "Prompt tokens evaluated",
            m.prompt_tokens.clone(),
        );
        r.register(
            "prompt_tokens_cached",
            "Prompt tokens taken from the prefix cache instead of evaluated",
            m.prompt_tokens_cached.clone(),
        );
        r.register(
            "generated_tokens",
            "Tokens generated",
            m.generated_tokens.clone(),
        );
        r.register(
            "requests",
            "Completion requests accepted",
            m.requests.clone(),
        );
        r.register(
            "requests_rejected",
            "Requests refused because the queue was full",
            m.rejected.clone(),
        );
        r.register(
            "requests_cancelled",
            "Requests whose client went away before the end",
            m.cancelled.clone(),
        );
        r.register(
            "requests_running",
            "Requests holding a sequence",
            m.requests_running.clone(),
        );
        r.register(
            "requests_waiting",
            "Requests queued for a sequence",
            m.requests_waiting.clone(),
        );
        r.register(
            "kv_cells_used",
            "KV-cache cells held by running requests",
            m.kv_cells_used.clone(),
        );
        r.register(
            "kv_cells",
            "KV-cache cells in all (parallel sequences x context)",
            kv_total,
        );
        r.register(
            "time_to_first_token_seconds",
            "From a request's arrival to its first generated token",
            m.time_to_first_token.clone(),
        );
        r.register(
            "time_per_output_token_seconds",
            "Between consecutive generated tokens of a request",
            m.time_per_output_token.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_counters_gauges_and_histograms() {
        let m = Metrics::new(4096);
        m.generated_tokens.inc_by(3);
        m.kv_cells_used.set(17);
        m.time_to_first_token.observe(0.2);
        let text = m.render();
        assert!(text.contains("mcc_generated_tokens_total 3"), "{text}");
        assert!(text.contains("mcc_kv_cells_used 17"), "{text}");
        assert!(text.contains("mcc_kv_cells 4096"), "{text}");
        assert!(
            text.contains("mcc_time_to_first_token_seconds_count 1"),
            "{text}"
        );
    }
}
