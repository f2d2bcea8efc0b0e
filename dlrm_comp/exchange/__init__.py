"""The embedding all-to-all: a per-table plan, batched codecs and one exchange over a transport."""
from dlrm_comp.exchange.exchange import Exchange
from dlrm_comp.exchange.layout import destination_rows
from dlrm_comp.exchange.plan import CompressionPlan, DirectionPlan
from dlrm_comp.exchange.transport import LoopbackTransport, ProcessGroupTransport

__all__ = ["Exchange", "destination_rows", "CompressionPlan", "DirectionPlan", "LoopbackTransport",
           "ProcessGroupTransport"]
