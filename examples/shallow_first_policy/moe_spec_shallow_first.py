"""shallow-first: a moe-spec policy plugin in its own package.

Router mass, except that the experts picked by tokens at depth <= max_depth
(the root and its children: the tokens most likely to be accepted) are never dropped.
"""

from moe_spec import Policy, PolicyError, hookimpl


class ShallowFirst(Policy):
    name = "shallow-first"
    description = "router mass; experts of tokens at depth <= max_depth are never dropped"

    def __init__(self, max_depth: int = 1):
        if type(max_depth) is not int or max_depth < 0:
            raise PolicyError(
                f"shallow-first: max_depth is {max_depth!r}; allowed: an integer >= 0"
            )
        self.max_depth = max_depth

    def score(self, record):
        mass_E = record.router_mass_E()
        if record.depth_T is None:  # no tree depths for these rows: plain router mass
            return mass_E
        shallow_T = (record.depth_T <= self.max_depth) & record.valid_mask_T()
        shallow_E = (record.topk_hits_TE() & shallow_T[:, None]).any(dim=0)
        return mass_E + shallow_E * (mass_E.sum() + 1.0)


@hookimpl
def register_policies(register):
    register(ShallowFirst)
