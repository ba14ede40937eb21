"""The server's Prometheus metrics (``GET /metrics``), in the names vLLM uses where it has one, so
the dashboards and alerts written for vLLM read them: requests running and waiting, prompt and
generated tokens, time to first token, inter-token latency and end-to-end latency histograms,
prefix-cache queries and hits (in tokens). crosslmm's own: the encoded-video cache."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# vLLM's buckets (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)


class ServeMetrics:
    """One registry per engine (several engines in one process, as in the tests, do not mix)."""

    def __init__(self, model_name: str):
        self.registry = registry = CollectorRegistry()
        labels = {"model_name": model_name}

        def labelled(metric):
            return metric.labels(**labels)

        def make(kind, name, documentation, **options):
            return labelled(kind(name, documentation, list(labels), registry=registry, **options))

        self.running = make(Gauge, "vllm:num_requests_running", "Requests whose answer is being generated.")
        self.waiting = make(Gauge, "vllm:num_requests_waiting", "Requests admitted and waiting for the model.")
        self.prompt_tokens = make(Counter, "vllm:prompt_tokens", "Prompt tokens of the requests answered.")
        self.generation_tokens = make(Counter, "vllm:generation_tokens", "Tokens generated.")
        self.prefix_queries = make(Counter, "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_hits = make(Counter, "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.first_token = make(Histogram, "vllm:time_to_first_token_seconds",
                                "From admission to the first generated token.", buckets=TTFT_BUCKETS)
        self.inter_token = make(Histogram, "vllm:inter_token_latency_seconds", "Between two generated pieces.",
                                buckets=ITL_BUCKETS)
        self.end_to_end = make(Histogram, "vllm:e2e_request_latency_seconds", "From admission to the last token.",
                               buckets=E2E_BUCKETS)
        self.success = Counter("vllm:request_success", "Requests answered, by finish reason.",
                               ["model_name", "finished_reason"], registry=registry)
        self.model_name = model_name
        self.video_queries = make(Counter, "crosslmm:video_cache_queries", "Requests with a video or image.")
        self.video_hits = make(Counter, "crosslmm:video_cache_hits", "Requests whose video was decoded already.")

    def finished(self, reasons: list[str]) -> None:
        for reason in reasons:
            self.success.labels(model_name=self.model_name, finished_reason=reason).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
