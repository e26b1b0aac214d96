"""Model architectures served by the engine, chosen by the `architectures` entry of config.json."""
from laminar.config import ModelConfig
from laminar.models.causal_lm import CausalLM
from laminar.models.gpt_oss import GptOssForCausalLM
from laminar.models.qwen3 import Qwen3ForCausalLM

ARCHITECTURES: dict[str, type[CausalLM]] = {
    "Qwen3MoeForCausalLM": Qwen3ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "GptOssForCausalLM": GptOssForCausalLM,
}


def model_class(cfg: ModelConfig) -> type[CausalLM]:
    return ARCHITECTURES[cfg.architecture]


__all__ = ["ARCHITECTURES", "CausalLM", "GptOssForCausalLM", "Qwen3ForCausalLM", "model_class"]
