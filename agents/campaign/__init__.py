"""Outbound campaigns (issue 15; the guide's Pattern 2): contacts and limits in Redis,
each dial claimed by one script, progress driven by webhooks."""

from ringez_worker.agents.campaign.agent import CampaignAgent, campaign_call_key
from ringez_worker.agents.campaign.api import (
    CampaignError,
    Created,
    NoContacts,
    cancel,
    contact_for_call,
    create_campaign,
    export,
    list_campaigns,
    pause,
    resume,
    start,
    status,
)
from ringez_worker.agents.campaign.models import CampaignConfig

__all__ = [
    "CampaignAgent",
    "CampaignConfig",
    "CampaignError",
    "Created",
    "NoContacts",
    "campaign_call_key",
    "cancel",
    "contact_for_call",
    "create_campaign",
    "export",
    "list_campaigns",
    "pause",
    "resume",
    "start",
    "status",
]
