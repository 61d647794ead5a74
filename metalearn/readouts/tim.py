"""readout=tim: TIM-GD's inference (Boudiaf et al. 2020, the paper's defaults) on any embedding method's flattened
codes, as the paper applies it to any trained encoder. Transductive: a query's class depends on the other queries."""

from __future__ import annotations

from metalearn.methods.tim import tim_head
from metalearn.readouts import READOUTS, Readout


@READOUTS.register("tim")
class TIMReadout(Readout):
    transductive = True
    # its names in results written before readouts were registered (metalearn-eval head=tim), so those keep their files
    file_tag = "_head-tim"

    def record(self) -> dict:
        return {"head": "tim"}

    def logits(self, method, zs, support_labels, zq, ways):
        return tim_head(zs.flatten(2), support_labels, zq.flatten(2), ways)
