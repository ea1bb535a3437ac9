"""cogcot inference: chat with a KV cache, the CLI demo, LLaVA-CoT staged search, judges, evaluation.

    from inference import Chat, SamplingOptions, StagedSearch, SearchOptions
    from inference.evaluate import evaluate     # (the module keeps its name: inference.evaluate.evaluate)
"""
from .chat import Chat, ContextTooLong
from .generation import ForwardCounter, StopCriteria
from .judges import ApiJudge, Judge, LogprobJudge, SelfJudge, Verdict, make_judge, parse_verdict
from .options import DEFAULT_STAGES, GREEDY, SamplingOptions, SearchOptions, StageSpec
from .prompt import Prompt, build_prompt
from .search import JudgmentLog, SearchResult, StagedSearch

__all__ = ["Chat", "ContextTooLong", "ForwardCounter",
           "StopCriteria", "ApiJudge", "Judge", "LogprobJudge", "SelfJudge", "Verdict", "make_judge",
           "parse_verdict", "DEFAULT_STAGES", "GREEDY", "SamplingOptions", "SearchOptions", "StageSpec", "Prompt",
           "build_prompt", "JudgmentLog", "SearchResult", "StagedSearch"]
