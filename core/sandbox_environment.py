"""The bounded Jinja environment a chat template is compiled in: transformers' chat-template
environment (sandbox, filters, globals, ``{% generation %}``) with every operation charged
against the rendering's budget (:mod:`airo.core.sandbox_budget`)."""

from __future__ import annotations

import functools
import json
import time
from datetime import datetime

from . import sandbox_budget
from .sandbox_budget import (_BUDGET, MAX_INT_BITS, TOJSON_MAX_INDENT, _budget, _check_call, _check_widths,
                             _filter_guard, _lipsum, _size, _Stop)

# -- the environment -------------------------------------------------------------------------

_ENVIRONMENT = None


def _environment():
    """The bounded environment, built once: transformers' chat-template environment (its
    sandbox class, trim/lstrip blocks, loop controls, ``{% generation %}``, ``tojson``,
    ``raise_exception``, ``strftime_now``, ``dict`` and ``namespace``) with the bounds above."""
    global _ENVIRONMENT
    if _ENVIRONMENT is not None:
        return _ENVIRONMENT
    import jinja2
    import jinja2.compiler
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.runtime import Context
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    sandbox_budget._INTERNAL = (jinja2.Environment, nodes.EvalContext, Context)

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` renders its body (transformers tracks
        where it is for an assistant mask; the text is the same)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

        def _generation_support(self, caller):
            return caller()

    def literal_chars(body) -> int:
        """The literal text a body writes each time it runs (nested loops and macros charge their own)."""
        total = 0
        stack = list(body)
        while stack:
            node = stack.pop()
            if isinstance(node, nodes.TemplateData):
                total += len(node.data)
            elif not isinstance(node, (nodes.For, nodes.Macro, nodes.CallBlock)):
                stack.extend(node.iter_child_nodes())
        return total

    # The bounds are added as filters: Jinja calls a filter directly (a call from template code
    # goes through the sandbox's checks, which would cost more than the rendering), and a filter
    # that takes the context is never folded into a constant while compiling.
    def charge_node(cost: int):
        return nodes.Output([nodes.Filter(nodes.Const(""), "airo_charge", [nodes.Const(cost)], [], None, None)])

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["+", "*", "**", "%"])

        def _parse(self, source, name, filename):
            tree = super()._parse(source, name, filename)
            for loop in tree.find_all(nodes.For):
                cost = literal_chars(loop.body)
                if loop.recursive:  # its iterations are calls to loop(), each charged here
                    loop.body.insert(0, charge_node(cost))
                else:
                    loop.iter = nodes.Filter(loop.iter, "airo_loop", [nodes.Const(cost)], [], None, None)
            for block in (*tree.find_all(nodes.Macro), *tree.find_all(nodes.CallBlock)):
                block.body.insert(0, charge_node(literal_chars(block.body)))
            return tree

        def call_binop(self, context, operator, left, right):
            budget = _BUDGET.get() or _budget()
            if operator == "+":
                if type(left) is str and type(right) is str:  # the common case: text joined to text
                    size = len(left) + len(right)
                    if size > budget.max_value:
                        budget.allow(size, "a concatenated string")
                    budget.work_left -= size
                    if budget.work_left < 0:
                        budget.charge(0)
                    return left + right
                if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                    budget.allow(_size(left) + _size(right), "a concatenated value")
            elif operator == "%":
                if type(left) is int and type(right) is int:  # loop.index0 % 2
                    return left % right
                if isinstance(left, str):
                    _check_widths(left, right, budget)
            elif operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(times, int) and isinstance(seq, (str, list, tuple)):
                        budget.allow(_size(seq) * max(times, 0), "a repeated value")
                if isinstance(left, int) and isinstance(right, int):
                    if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                        raise _Stop(f"would compute a number of more than {MAX_INT_BITS:,} bits")
            elif operator == "**":
                if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                    if left.bit_length() * right > MAX_INT_BITS:
                        raise _Stop(f"would compute a number of more than {MAX_INT_BITS:,} bits")
            result = self.binop_table[operator](left, right)
            if not isinstance(result, (int, float)):
                size = _size(result)
                budget.allow(size, "a value")
                budget.charge(size)
            return result

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
            budget = _budget()
            budget.tick()
            _check_call(__obj, args, kwargs, budget)
            result = super().call(__context, __obj, *args, **kwargs)
            if isinstance(result, (str, list, tuple, dict)):
                size = _size(result)
                budget.allow(size, "a value")
                budget.charge(size)
            return result

    @jinja2.pass_context
    def loop(_context, iterable, cost: int):
        """A for loop's items, each one checking the deadline and charging the body's literal text."""
        budget = _budget()
        deadline = budget.deadline
        clock = time.perf_counter
        for item in iterable:
            budget.work_left -= cost
            if budget.work_left < 0 or clock() > deadline:
                budget.tick()
                budget.charge(0)
            yield item

    @jinja2.pass_context
    def charge(_context, _value, cost: int) -> str:
        budget = _budget()
        budget.tick()
        budget.charge(cost)
        return ""

    def finalize(value):
        budget = _BUDGET.get()
        if budget is not None:  # else Jinja folds a constant while compiling
            budget.work_left -= len(value) if type(value) is str else 16
            if budget.work_left < 0:
                budget.charge(0)
        return value

    def concat(*values) -> str:
        parts = [str(v) for v in values]
        budget = _budget()
        size = sum(map(len, parts))
        budget.allow(size, "a concatenated string")
        budget.charge(size)
        return "".join(parts)

    class Generator(jinja2.compiler.CodeGenerator):
        @jinja2.compiler.optimizeconst
        def visit_Concat(self, node, frame):  # noqa: N802 - Jinja's visitor name
            """``a ~ b`` joined by ``airo_concat``, which checks the size before joining."""
            self.write("environment.airo_concat(")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write(")")

    BoundedEnvironment.code_generator_class = Generator

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        if isinstance(indent, int) and indent > TOJSON_MAX_INDENT:
            raise _Stop(f"asked tojson for an indent of {indent} (at most {TOJSON_MAX_INDENT})")
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):  # noqa: A002 - the name transformers gives it
        return datetime.now().strftime(format)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):  # noqa: N805 - Jinja's Namespace signature
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a namespace attribute may not start with '_': {name!r}")

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, finalize=finalize,
                             extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.filters = {name: _filter_guard(name, fn) for name, fn in env.filters.items()}
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=TemplateDict(),
                       namespace=TemplateNamespace, lipsum=_lipsum)
    env.filters.update(airo_loop=loop, airo_charge=charge)
    env.airo_concat = concat
    _ENVIRONMENT = env
    return env


@functools.lru_cache(maxsize=64)
def _compiled(chat_template: str):
    return _environment().from_string(chat_template)
