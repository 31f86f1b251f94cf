"""User SQL guard: one read-only statement over the project's tables, checked on tokens and on the engine's AST."""

from __future__ import annotations

import re
from dataclasses import dataclass

from selfevolve.errors import QueryRejected

# The guard is a deny-by-default filter in front of an engine session that is itself readonly=1 and capped:
# either layer alone should refuse a file read, a write or a settings change; together they must.
#
# Tokens, not regexes: a keyword inside a string literal or a comment must not count, and one hidden by a
# comment or a quote trick must. Where ClickHouse's lexer is richer than this one (nested /* */, '#'
# comments, $heredoc$ strings, Unicode quotes and whitespace) the query is refused rather than guessed at:
# outside string literals only printable ASCII is accepted.

DATABASE = "selfevolve"
# Metadata a user needs to write queries; nothing else of `system` (settings, processes, users, disks ...).
SYSTEM_TABLES = frozenset({"columns", "tables"})
STATEMENTS = ("SELECT", "WITH", "EXPLAIN", "DESCRIBE", "DESC", "SHOW")
EXPLAIN_KINDS = frozenset({"ast", "syntax", "plan", "pipeline", "estimate"})

# Bare words that have no place in a read: writes, DDL, access control, session state, output redirection.
FORBIDDEN_WORDS = frozenset({
    "insert", "into", "outfile", "infile", "settings", "set", "format", "drop", "alter", "create", "attach",
    "detach", "grant", "revoke", "kill", "optimize", "truncate", "rename", "exchange", "undrop", "delete",
    "update", "use", "backup", "restore", "watch", "move", "begin", "commit", "rollback", "check", "system",
    "function", "dictionary", "cluster", "local", "temporary", "live", "window_view", "parameter",
})
# Every table function chdb 26.9 knows (system.table_functions), lower-cased; the store adds the live list.
TABLE_FUNCTIONS = frozenset(n.lower() for n in """
    SQLStandardValues arrowstream azureBlobStorage azureBlobStorageCluster bigquery cluster clusterAllReplicas
    cosn deltaLake deltaLakeAzure deltaLakeAzureCluster deltaLakeCluster deltaLakeLocal deltaLakeS3
    deltaLakeS3Cluster dictionary eval executable file fileCluster filesystem format fuzzJSON fuzzQuery gcs
    generateRandom generateSeries generate_series hdfs hdfsCluster hudi hudiCluster iceberg icebergAzure
    icebergAzureCluster icebergCluster icebergHDFS icebergHDFSCluster icebergLocal icebergLocalCluster icebergS3
    icebergS3Cluster input jdbc loop merge mergeTreeAnalyzeIndexes mergeTreeAnalyzeIndexesUUID
    mergeTreeCodecBlockCounts mergeTreeIndex mergeTreeProjection mergeTreeTextIndex mongodb mysql null numbers
    numbers_mt odbc oss paimon paimonAzure paimonAzureCluster paimonCluster paimonHDFS paimonHDFSCluster
    paimonLocal paimonS3 paimonS3Cluster postgresql primes prometheusQuery prometheusQueryRange python redis
    remote remoteSecure s3 s3Cluster sqlite timeSeriesData timeSeriesMetricFamilies timeSeriesMetrics
    timeSeriesSamples timeSeriesSelector timeSeriesTags url urlCluster values view viewExplain viewIfPermitted
    ytsaurus zeros zeros_mt executablePool hive azure mysqlCluster postgresqlCluster arrowFlight
""".split())
# Scalar functions that read files or other tables by name, reach the network, reveal the host, or stall.
DENIED_FUNCTIONS = frozenset(n.lower() for n in """
    file joinGet joinGetOrNull hasColumnInTable getSetting getSettingOrDefault getServerSetting
    getMergeTreeSetting getMacro getClientHTTPHeader demangle sleep sleepEachRow globalVariable catboostEvaluate
    evalMLMethod fuzzQuery hostName hostname fqdn fullHostName getServerPort tcpPort getOSKernelVersion serverUUID
    buildId zookeeperSessionUptime currentRequestURL initializeAggregation
""".split())
# ai*: aiEmbed, aiSimilarity send text to a configured AI provider over the network.
DENIED_PREFIXES = ("dict", "filesystem", "addressto", "__", "icebergs3", "s3", "ai")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = ("<=>", "<=", ">=", "!=", "<>", "==", "||", "->", "::")
_SINGLE_OPS = set("()[]{},.;+-*/%<>=!?:^&|~@")


@dataclass(frozen=True)
class Token:
    kind: str  # word | ident (quoted) | string | number | op
    text: str  # words and quoted identifiers: the name; strings: the raw literal
    end: int = 0  # offset just past the token in the SQL text

    @property
    def low(self) -> str:
        return self.text.lower()


def _reject(why: str) -> QueryRejected:
    return QueryRejected(f"query rejected: {why}")


def _quoted(sql: str, i: int, quote: str) -> int:
    """Index just past the literal or identifier opened at sql[i]; backslash escapes and doubled quotes."""
    j = i + 1
    while j < len(sql):
        c = sql[j]
        if c == "\\":
            j += 2
        elif c == quote:
            if j + 1 < len(sql) and sql[j + 1] == quote:
                j += 2
            else:
                return j + 1
        else:
            j += 1
    raise _reject(f"unterminated {quote} quote")


def _comment_end(sql: str, i: int) -> int:
    """Index just past the comment at sql[i]; only printable ASCII inside, and no nesting."""
    if sql.startswith("--", i):
        end = sql.find("\n", i)
        end = len(sql) if end < 0 else end
        body = sql[i + 2:end]
    else:
        end = sql.find("*/", i + 2)
        if end < 0:
            raise _reject("unterminated /* comment")
        body, end = sql[i + 2:end], end + 2
        if "/*" in body:
            raise _reject("nested /* comments")
    if any(not (" " <= c <= "~" or c == "\t" or (c == "\n" and sql[i] == "/")) for c in body):
        raise _reject("control or non-ASCII characters in a comment")
    return end


def tokenize(sql: str) -> list[Token]:
    """ClickHouse tokens of `sql`, comments dropped; refuses what this lexer cannot read exactly."""
    tokens: list[Token] = []
    i = 0
    while i < len(sql):
        c = sql[i]
        if c in " \t\n\r":
            i += 1
        elif sql.startswith("--", i) or sql.startswith("/*", i):
            i = _comment_end(sql, i)
        elif c == "'":
            j = _quoted(sql, i, c)
            tokens.append(Token("string", sql[i:j], j))
            i = j
        elif c in "`\"":
            j = _quoted(sql, i, c)
            name = sql[i + 1:j - 1]
            if not _IDENT.match(name):  # no escapes, paths or odd names: they could mean anything
                raise _reject(f"quoted identifier {sql[i:j]!r}: only letters, digits and _ may be quoted")
            tokens.append(Token("ident", name, j))
            i = j
        elif c.isascii() and (c.isalpha() or c == "_"):
            m = _WORD.match(sql, i)
            tokens.append(Token("word", m.group(), m.end()))
            i = m.end()
        elif c.isascii() and c.isdigit():
            j = i
            while j < len(sql) and sql[j].isascii() and sql[j].isdigit():
                j += 1  # letters after digits lex as a word of their own: stricter, never laxer
            tokens.append(Token("number", sql[i:j], j))
            i = j
        else:
            op = next((o for o in _OPS if sql.startswith(o, i)), c if c in _SINGLE_OPS else None)
            if op is None:
                shown = c if " " < c <= "~" else f"U+{ord(c):04X}"
                raise _reject(f"character {shown!r} outside a string literal")
            if op in "{}?":
                raise _reject("query parameters ({name:Type} or ?) are not supported")
            tokens.append(Token("op", op, i + len(op)))
            i += len(op)
    return tokens


@dataclass(frozen=True)
class Policy:
    """What user SQL may read: the project's tables in `database`, and a few `system` tables."""

    tables: frozenset[str]
    database: str = DATABASE
    system_tables: frozenset[str] = SYSTEM_TABLES
    table_functions: frozenset[str] = TABLE_FUNCTIONS

    def allows(self, name: str, ctes: frozenset[str] = frozenset()) -> bool:
        """Whether a table reference (`t` or `db.t`, as the engine prints it) is readable."""
        db, _, table = name.rpartition(".")
        if not db:
            return table in self.tables or table in ctes
        return (db == self.database and table in self.tables) or (db == "system" and table in self.system_tables)


def _denied_function(name: str, policy: Policy) -> bool:
    low = name.lower()
    return low in policy.table_functions or low in DENIED_FUNCTIONS or low.startswith(DENIED_PREFIXES)


def _table_ref(tokens: list[Token], i: int) -> tuple[str, int] | None:
    """The table name starting at tokens[i] (`t` or `db.t`) and the index after it; None if not a name."""
    if i >= len(tokens) or tokens[i].kind not in ("word", "ident"):
        return None
    if i + 2 < len(tokens) and tokens[i + 1].text == "." and tokens[i + 2].kind in ("word", "ident"):
        return f"{tokens[i].text}.{tokens[i + 2].text}", i + 3
    return tokens[i].text, i + 1


_FROM_ENDS = frozenset({"where", "prewhere", "group", "order", "limit", "having", "window", "qualify", "union",
                        "except", "intersect", "on", "using", "array", "offset", "select", "with"})


def _check_tables(tokens: list[Token], policy: Policy, ctes: frozenset[str]) -> None:
    """Every FROM / JOIN / comma-joined / IN table is allowed, and none is a table function or a literal."""
    in_from: dict[int, bool] = {}
    subquery = [True]  # per open parenthesis: a query level (not a call like extract(day FROM ts))
    for i, tok in enumerate(tokens):
        if tok.text == "(":
            nxt = tokens[i + 1].low if i + 1 < len(tokens) else ""
            subquery.append(nxt in ("select", "with"))
            continue
        if tok.text == ")":
            in_from.pop(len(subquery), None)
            if len(subquery) > 1:
                subquery.pop()
            continue
        depth, low = len(subquery), (tok.low if tok.kind == "word" else "")
        if low in _FROM_ENDS:
            in_from[depth] = False
        starts = subquery[-1] and (low == "from" or (low == "join" and not (i and tokens[i - 1].low == "array"))
                                   or (tok.text == "," and in_from.get(depth, False)))
        if low in ("from", "join") and starts:
            in_from[depth] = True
        # x IN t reads table t; x IN (..), IN f(..) (checked as a call) and IN literals do not.
        after_in = (low == "in" and i + 1 < len(tokens) and tokens[i + 1].kind in ("word", "ident")
                    and not (i + 2 < len(tokens) and tokens[i + 2].text == "("))
        if not (starts or after_in):
            continue
        nxt_tok = tokens[i + 1] if i + 1 < len(tokens) else None
        if nxt_tok is None or nxt_tok.text == "(":
            continue  # a subquery (its contents are checked as tokens too) or the end
        ref = _table_ref(tokens, i + 1)
        if ref is None:
            raise _reject(f"{nxt_tok.text!r} after {tok.text.upper()} is not a table name")
        name, after = ref
        if after < len(tokens) and tokens[after].text == "(":
            raise _reject(f"table function {name}() is not allowed")
        if not policy.allows(name, ctes):
            raise _reject(f"table {name} is not readable (only the {policy.database} tables and system."
                          f"{'/'.join(sorted(policy.system_tables))})")


def _check_words(tokens: list[Token], policy: Policy) -> None:
    """No forbidden keyword, no denied function call, one statement."""
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1].text if i + 1 < len(tokens) else ""
        if tok.text == ";":
            raise _reject("more than one statement")
        if tok.kind in ("word", "ident") and nxt == "(" and _denied_function(tok.text, policy):
            raise _reject(f"function {tok.text}() is not allowed (no table functions, file, dictionary, "
                          "host or sleep functions)")
        if tok.kind == "word" and tok.low in FORBIDDEN_WORDS:
            if tok.low == "system" and nxt == ".":
                continue  # system.columns: the table check decides
            if i == 1 and tok.low == "create" and tokens[0].low == "show":
                continue  # SHOW CREATE TABLE: _check_show decides
            raise _reject(f"{tok.text.upper()} is not allowed: only SELECT, EXPLAIN, DESCRIBE and SHOW "
                          "over the history tables")


def _ctes(tokens: list[Token]) -> frozenset[str]:
    """Names bound by WITH name AS (subquery): FROM may read them."""
    return frozenset(t.text for t, a, p in zip(tokens, tokens[1:], tokens[2:])
                     if t.kind in ("word", "ident") and a.low == "as" and p.text == "(")


def _check_show(tokens: list[Token], policy: Policy) -> None:
    """SHOW TABLES [FROM db] [LIKE '...'], SHOW DATABASES, SHOW CREATE [TABLE] t, SHOW COLUMNS FROM t."""
    words = [t.low if t.kind == "word" else t.text for t in tokens[1:]]
    if words[:1] == ["tables"]:
        rest = words[1:]
        if rest[:1] in (["from"], ["in"]):
            if rest[1:2] != [policy.database]:
                raise _reject(f"SHOW TABLES only FROM {policy.database}")
            rest = rest[2:]
        if not rest or (rest[0] in ("like", "ilike") and len(rest) == 2 and tokens[-1].kind == "string"):
            return
    elif words == ["databases"]:
        return
    elif words[:1] == ["create"] or words[:2] in (["columns", "from"], ["columns", "in"]):
        start = 2 if words[:2] in (["create", "table"], ["columns", "from"], ["columns", "in"]) else 1
        ref = _table_ref(tokens, start + 1)
        if ref and ref[1] == len(tokens) and policy.allows(ref[0]):
            return
        raise _reject("SHOW CREATE / SHOW COLUMNS only of a history table")
    raise _reject("only SHOW TABLES, SHOW DATABASES, SHOW CREATE TABLE t and SHOW COLUMNS FROM t")


def check(sql: str, policy: Policy) -> str:
    """The statement to run if `sql` is one allowed read, else QueryRejected saying why."""
    tokens = tokenize(sql)
    while tokens and tokens[-1].text == ";":
        tokens.pop()
    if not tokens:
        raise _reject("empty statement")
    first = tokens[0].low if tokens[0].kind == "word" else tokens[0].text
    if first not in ("select", "with", "explain", "describe", "desc", "show", "("):
        raise _reject(f"{tokens[0].text.upper()!s} statements are not allowed: only "
                      f"{', '.join(STATEMENTS)}")
    _check_words(tokens, policy)
    body = tokens
    if first == "show":
        _check_show(tokens, policy)
    elif first == "explain":
        kind = [t.low for t in tokens[1:3]]
        body = tokens[3:] if kind == ["query", "tree"] else tokens[2:] if kind[:1] and kind[0] in EXPLAIN_KINDS \
            else tokens[1:]
        if not body or body[0].low not in ("select", "with") and body[0].text != "(":
            raise _reject("EXPLAIN [AST|SYNTAX|PLAN|PIPELINE|ESTIMATE|QUERY TREE] only of a SELECT, without options")
    elif first in ("describe", "desc"):
        body = tokens[2:] if len(tokens) > 1 and tokens[1].low == "table" else tokens[1:]
        if not body:
            raise _reject("DESCRIBE what?")
        if body[0].text != "(":
            ref = _table_ref(body, 0)
            if ref is None or ref[1] != len(body) or not Policy.allows(policy, ref[0]):
                raise _reject("DESCRIBE only a history table or a (subquery)")
    if first != "show":
        _check_tables(body, policy, _ctes(body))
    # Up to the last token: no trailing ';' or comment, so the driver's own FORMAT clause lands in the query.
    return sql[:tokens[-1].end].strip()


_AST_ROOTS = ("SelectWithUnionQuery", "Explain", "DescribeQuery", "ShowTables", "ShowCreateTableQuery",
              "ShowColumns")


def check_ast(statement: str, explain_ast: list[str], policy: Policy) -> None:
    """Second opinion from the engine's own parse (`EXPLAIN AST <statement>`, one line per node).

    Refuses what the token check might have misread: a table function (a Function directly under a
    TableExpression), a denied function anywhere, a SETTINGS clause (a Set node), a FORMAT other than the
    driver's or INTO OUTFILE (extra children of the root), and a table outside the policy.
    """
    if not explain_ast or not explain_ast[0].startswith(_AST_ROOTS):
        raise _reject(f"statement kind {explain_ast[0].split(' ')[0] if explain_ast else '?'} is not allowed")
    show = explain_ast[0].startswith("Show")
    ctes = _ctes(tokenize(statement))
    parents: list[str] = []  # node kind at each indent above the current line
    for line in explain_ast:
        indent = len(line) - len(line.lstrip(" "))
        kind, _, rest = line.strip().partition(" ")
        name = rest.split(" (", 1)[0].strip()
        del parents[indent:]
        parent = parents[-1] if parents else ""
        parents.append(kind)
        if kind == "Set":
            raise _reject("SETTINGS are not allowed")
        if kind == "Function" and (parent == "TableExpression" or _denied_function(name, policy)):
            raise _reject(f"function {name}() is not allowed")
        if kind == "TableIdentifier" and not policy.allows(name, ctes):
            raise _reject(f"table {name} is not readable")
        if indent == 1 and not show and (kind == "Literal" or (kind == "Identifier" and name != "Native")):
            raise _reject("INTO OUTFILE and FORMAT are not allowed")
