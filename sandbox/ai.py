"""Deterministic stand-ins for Ringez's AI helpers: keyword rules, so tests can predict them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict
from typing import Any

from ringez_worker.sandbox.config import RouteConfig

# A word matches its stem and any suffix: "cancel" also catches "cancelled".
ANGRY = (
    "terrible", "furious", "ridiculous", "manager", "cancel", "angry", "unacceptable",
    "worst", "awful", "useless", "outrageous", "fed up", "sick of",
)  # fmt: skip
MILD = (
    "problem", "issue", "annoy", "disappoint", "frustrat", "wrong", "broken", "not working",
    "slow", "charged twice", "unhappy",
)  # fmt: skip
POSITIVE = (
    "thanks", "thank you", "great", "perfect", "excellent", "appreciate", "wonderful",
    "awesome", "helpful",
)  # fmt: skip
ESCALATION = ("manager", "supervisor", "human", "real person", "representative")
ACCOUNT = (
    "balance", "account", "minute", "credit", "wallet", "top up", "billing", "charged",
    "refund", "invoice",
)  # fmt: skip
TECHNICAL = (
    "error", "not working", "broken", "crash", "bug", "connection", "dropped", "outage",
    "reset", "password", "login", "log in", "install", "technical", "static", "echo",
    "can't hear",
)  # fmt: skip

_PHONE = re.compile(r"\+\d{8,15}\b")
_MONEY = re.compile(r"[$₹]\s?\d+(?:\.\d{1,2})?")


def _pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\w*", re.IGNORECASE)


_RULES = {
    name: _pattern(words)
    for name, words in {
        "angry": ANGRY,
        "mild": MILD,
        "positive": POSITIVE,
        "escalation": ESCALATION,
        "account": ACCOUNT,
        "technical": TECHNICAL,
    }.items()
}


def _hits(rule: str, text: str) -> list[str]:
    return [m.group(0).lower() for m in _RULES[rule].finditer(text)]


def analyze_sentiment(text: str, include_recommendations: bool = True) -> dict[str, Any]:
    """`POST /agents/sentiment-analysis`: angry words dominate, then mild, then positive."""
    angry, mild, positive = _hits("angry", text), _hits("mild", text), _hits("positive", text)
    if angry:
        score = max(-1.0, -0.7 - 0.1 * (len(angry) - 1) - 0.05 * len(mild))
        sentiment, emotion, urgency, escalate = "negative", "angry", "high", True
        actions = ["apologize", "escalate_to_supervisor", "transfer_call"]
    elif mild and len(mild) >= len(positive):
        score = max(-0.6, -0.3 - 0.1 * (len(mild) - 1))
        sentiment, emotion, urgency, escalate = "negative", "frustrated", "medium", False
        actions = ["acknowledge_issue", "offer_solution"]
    elif positive:
        score = min(1.0, 0.6 + 0.1 * (len(positive) - 1))
        sentiment, emotion, urgency, escalate = "positive", "satisfied", "low", False
        actions = ["thank_customer"]
    else:
        score, sentiment, emotion, urgency, escalate = 0.0, "neutral", "calm", "low", False
        actions = []
    return {
        "sentiment": sentiment,
        "sentiment_score": round(score, 2),
        "emotion": emotion,
        "urgency": urgency,
        "escalation_recommended": escalate,
        "key_phrases": angry + mild + positive,
        "suggested_actions": actions if include_recommendations else [],
    }


def detect_intent(text: str, route: RouteConfig) -> dict[str, Any]:
    """`POST /agents/intent-detection`: escalation beats account beats technical."""
    entities = [{"type": "phone_number", "value": m} for m in _PHONE.findall(text)]
    entities += [{"type": "money", "value": m} for m in _MONEY.findall(text)]
    if words := _hits("escalation", text):
        human = any(w.startswith(("human", "real", "represent")) for w in words)
        return {
            "intent": "escalation_request",
            "sub_intent": "speak_to_human" if human else "speak_to_manager",
            "entities": entities,
            "confidence": 0.92,
            "suggested_action": "transfer",
            "suggested_parameters": {
                "transfer_to": route.route_to,
                "reason": "customer_escalation",
            },
        }
    if words := _hits("account", text):
        billing = any(w.startswith(("billing", "charged", "refund", "invoice")) for w in words)
        return {
            "intent": "account_inquiry",
            "sub_intent": "billing_question" if billing else "balance_check",
            "entities": entities,
            "confidence": 0.85,
            "suggested_action": "check_balance",
            "suggested_parameters": {},
        }
    if words := _hits("technical", text):
        login = any(w.startswith(("password", "login", "log in", "reset")) for w in words)
        return {
            "intent": "technical_support",
            "sub_intent": "login" if login else "troubleshooting",
            "entities": entities,
            "confidence": 0.8,
            "suggested_action": "troubleshoot",
            "suggested_parameters": {},
        }
    return {
        "intent": "general_inquiry",
        "sub_intent": None,
        "entities": entities,
        "confidence": 0.5,
        "suggested_action": "continue_conversation",
        "suggested_parameters": {},
    }


def route_call(route: RouteConfig) -> dict[str, Any]:
    """`POST /agents/call-routing`: the configured route, whatever the criteria."""
    return asdict(route)


def synthesize(text: str, voice: str, speed: float, output_format: str, base_url: str) -> dict:
    """`POST /agents/voice-synthesis`: a stable audio id and a duration from the word count."""
    digest = hashlib.sha256(f"{voice}|{speed}|{output_format}|{text}".encode()).hexdigest()
    audio_id = f"audio_{digest[:16]}"
    words = max(1, len(text.split()))
    return {
        "audio_id": audio_id,
        "audio_url": f"{base_url}/_sandbox/audio/{audio_id}.{output_format}",
        # About 150 words a minute at speed 1.
        "duration": round(words / 2.5 / speed, 2),
    }
