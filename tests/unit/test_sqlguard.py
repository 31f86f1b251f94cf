"""The user-SQL guard: which statements pass, which are refused and why, on tokens and on the engine's AST."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from selfevolve.errors import QueryRejected, StoreError
from selfevolve.store.sqlguard import TABLE_FUNCTIONS, Policy, check, check_ast, tokenize

TABLES = frozenset({"queries", "answers", "scores", "feedback", "dead_letters", "model_events"})
POLICY = Policy(tables=TABLES)

ACCEPTED = [
    "SELECT 1",
    "select count() from answers final",
    "SELECT * FROM selfevolve.answers FINAL WHERE tenant = 'x' LIMIT 10;",
    "SELECT * FROM answers AS a INNER JOIN (SELECT query_id FROM scores) AS s ON a.query_id = s.query_id",
    "SELECT * FROM answers AS a, scores AS s WHERE a.query_id = s.query_id",
    "WITH recent AS (SELECT * FROM answers FINAL) SELECT count() FROM recent",
    "WITH 2 AS two SELECT two",
    "SELECT extract(DAY FROM ts), trim(BOTH ' ' FROM answer) FROM answers",
    "SELECT x FROM answers ARRAY JOIN splitByChar(',', answer) AS x, models_called AS m",
    "SELECT 'DROP TABLE answers; INSERT INTO FUNCTION file(''x'')' AS harmless_text",
    "SELECT 'it''s \\' fine' -- a comment with DROP in it",
    "SELECT /* SETTINGS readonly=0 */ 1",
    "SELECT `offset`, \"partition\" FROM dead_letters",
    "SELECT format_version FROM answers",  # a word that merely starts like a keyword
    "SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3",
    "(SELECT 1)",
    "SELECT model FROM scores WHERE model IN ('a', 'b') AND query_id NOT IN (SELECT query_id FROM feedback)",
    "SELECT name, type FROM system.columns WHERE database = 'selfevolve'",
    "SELECT name FROM system.tables",
    "EXPLAIN SELECT 1",
    "EXPLAIN AST SELECT * FROM answers",
    "EXPLAIN QUERY TREE SELECT 1",
    "DESCRIBE answers",
    "DESC TABLE selfevolve.scores",
    "DESCRIBE (SELECT 1 AS x)",
    "SHOW TABLES",
    "SHOW TABLES FROM selfevolve LIKE 'a%'",
    "SHOW DATABASES",
    "SHOW CREATE TABLE answers",
    "SHOW COLUMNS FROM answers",
    "SELECT 'ünïcode ‘quotes’ inside a literal are data'",
    "SELECT 1e5, 0x1F, 1.5",
    "SELECT 1 IN tuple(1, 2), 'a' IN 'a', 2 IN [1, 2]",
]

REJECTED = [
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file"),
    ("SELECT file('/etc/passwd')", "file"),
    ("SELECT * FROM url('http://127.0.0.1:9092/', 'LineAsString')", "url"),
    ("SELECT * FROM s3('http://x/y')", "s3"),
    ("SELECT * FROM remote('127.0.0.1', system.one)", "remote"),
    ("SELECT * FROM executable('cat /etc/passwd', 'LineAsString', 'x String')", "executable"),
    ("SELECT * FROM answers, FiLe('/etc/passwd')", "FiLe"),
    ("SELECT * FROM `file`('/etc/passwd')", "file"),
    ("SELECT * FROM file /* gap */ ('/etc/passwd')", "file"),
    ("SELECT * FROM mongodb_new_thing('x')", "table function"),
    ("SELECT * FROM numbers(10)", "numbers"),
    ("SELECT dictGet('d', 'x', 1)", "dictGet"),
    ("SELECT sleepEachRow(3) FROM answers", "sleepEachRow"),
    ("SELECT getSetting('readonly')", "getSetting"),
    ("SELECT aiEmbed(answer) FROM answers", "aiEmbed"),
    ("INSERT INTO FUNCTION file('/tmp/x') SELECT 1", "INSERT"),
    ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO"),
    ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
    ("SELECT 1 FORMAT JSON", "FORMAT"),
    ("SET readonly = 0", "SET"),
    ("SELECT 1; DROP TABLE answers", "more than one statement"),
    ("SELECT 1;;SELECT 2", "more than one statement"),
    ("DROP TABLE answers", "DROP"),
    ("dRoP TABLE answers", "DROP"),
    ("ALTER TABLE answers DELETE WHERE 1", "ALTER"),
    ("CREATE TABLE x (a Int8) ENGINE = File(TSV, '/tmp/x')", "CREATE"),
    ("ATTACH TABLE x FROM '/tmp' (a Int8) ENGINE = File(TSV)", "ATTACH"),
    ("CREATE DICTIONARY d (k UInt64) PRIMARY KEY k SOURCE(FILE(path '/etc/passwd' format 'TSV'))", "CREATE"),
    ("SYSTEM SHUTDOWN", "SYSTEM"),
    ("KILL QUERY WHERE 1", "KILL"),
    ("GRANT ALL ON *.* TO default", "GRANT"),
    ("OPTIMIZE TABLE answers FINAL", "OPTIMIZE"),
    ("TRUNCATE TABLE answers", "TRUNCATE"),
    ("USE system", "USE"),
    ("SELECT 1 -- x\nSETTINGS readonly = 0", "SETTINGS"),
    ("SELECT 1 /* nested /* */ SETTINGS readonly = 0 */", "nested"),
    ("SELECT 1 # comment", "'#'"),
    ("SELECT $$abc$$", "'$'"),
    ("SELECT ‘a’", "U+2018"),
    ("SELECT * FROM “answers”", "U+201C"),
    ("ＳＥＬＥＣＴ 1", "U+FF33"),
    ("SELECT 1\u2003", "U+2003"),
    ("SELECT 1 -- comment\rSETTINGS readonly=0", "control"),
    ("SELECT * FROM `/etc/passwd`", "quoted identifier"),
    ("SELECT * FROM `answ\\ers`", "quoted identifier"),
    ("SELECT * FROM 'data.csv'", "not a table name"),
    ("SELECT * FROM system.settings", "SETTINGS"),
    ("SELECT * FROM system.users", "system.users"),
    ("SELECT * FROM default.x", "default.x"),
    ("SELECT * FROM passwd", "passwd"),
    ("SELECT 1 WHERE 1 IN system.processes", "system.processes"),
    ("SELECT 1 WHERE 1 IN file('/etc/passwd')", "file"),
    ("SELECT {x:UInt8}", "query parameters"),
    ("SELECT 'unterminated", "unterminated"),
    ("SELECT 1 /* unterminated", "unterminated"),
    ("SHOW PROCESSLIST", "only SHOW"),
    ("SHOW SETTINGS LIKE 'x'", "SETTINGS"),
    ("SHOW TABLES FROM system", "SYSTEM"),
    ("SHOW CREATE USER default", "history table"),
    ("DESCRIBE file('/etc/passwd')", "file"),
    ("DESCRIBE system.users", "DESCRIBE only"),
    ("EXPLAIN PLAN actions = 1 SELECT 1", "EXPLAIN"),
    ("EXPLAIN INSERT INTO answers SELECT 1", "INSERT"),
    ("WITH x AS (SELECT 1) INSERT INTO answers SELECT * FROM x", "INSERT"),
    ("", "empty"),
    (" ;  -- nothing", "empty"),
    ("SELEC 1", "SELEC"),
]


@pytest.mark.parametrize("sql", ACCEPTED)
def test_accepted(sql):
    statement = check(sql, POLICY)
    assert not statement.endswith(";") and "--" not in statement.split("'")[-1]


def test_statement_is_cut_after_its_last_token():
    assert check("SELECT 1 ; -- bye\n", POLICY) == "SELECT 1"
    assert check("SELECT 'a;b' /* c */", POLICY) == "SELECT 'a;b'"


@pytest.mark.parametrize("sql, why", REJECTED)
def test_rejected_with_a_clear_message(sql, why):
    with pytest.raises(QueryRejected, match="query rejected") as info:
        check(sql, POLICY)
    assert why.lower() in str(info.value).lower()
    assert isinstance(info.value, StoreError)  # callers that handle store errors handle this too


def test_tokens_respect_escapes_and_quotes():
    tokens = tokenize("SELECT 'a\\'b''c', `x`, \"y\" -- z\n/* w */ 1")
    assert [(t.kind, t.text) for t in tokens] == [
        ("word", "SELECT"), ("string", "'a\\'b''c'"), ("op", ","), ("ident", "x"), ("op", ","),
        ("ident", "y"), ("number", "1")]


# --- The engine's AST as the second check (lines as chdb's EXPLAIN AST prints them). ---

AST_FILE = """SelectWithUnionQuery (children 2)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      Function mystery (children 1)
       ExpressionList (children 1)
        Literal '/etc/passwd'
 Identifier Native"""

AST_OK = AST_FILE.replace("Function mystery (children 1)", "TableIdentifier answers (alias a)")


def test_ast_accepts_a_plain_read():
    check_ast("SELECT * FROM answers AS a", AST_OK.splitlines(), POLICY)


@pytest.mark.parametrize("ast, why", [
    (AST_FILE, "mystery"),  # any function directly under a TableExpression is a table function
    (AST_OK.replace("TableIdentifier answers", "TableIdentifier system.users"), "system.users"),
    (AST_OK.replace("Asterisk", "Function dictGetString (children 1)"), "dictGetString"),
    (AST_OK.replace("    Asterisk", "    Asterisk\n   Set"), "SETTINGS"),
    (AST_OK.replace(" Identifier Native", " Literal '/tmp/x'\n Identifier Native"), "OUTFILE"),
    (AST_OK.replace(" Identifier Native", " Identifier JSON"), "FORMAT"),
    ("InsertQuery (children 1)\n Identifier Native", "InsertQuery"),
    ("", "?"),
])
def test_ast_refuses(ast, why):
    with pytest.raises(QueryRejected, match="query rejected") as info:
        check_ast("SELECT 1", ast.splitlines(), POLICY)
    assert why in str(info.value)


def test_ast_reads_cte_names_from_the_statement():
    ast = AST_OK.replace("TableIdentifier answers (alias a)", "TableIdentifier recent")
    check_ast("WITH recent AS (SELECT 1) SELECT * FROM recent", ast.splitlines(), POLICY)
    with pytest.raises(QueryRejected, match="recent"):
        check_ast("SELECT * FROM recent", ast.splitlines(), POLICY)


# --- Properties. ---

_ws = st.sampled_from([" ", "\n", "\t", " /* c */ ", " -- c\n", "  "])
_case = st.sampled_from([str.lower, str.upper, str.title, lambda s: s])
_base = st.sampled_from(["SELECT * FROM answers", "SELECT count() FROM scores AS s", "SELECT 1",
                         "WITH w AS (SELECT 1) SELECT * FROM w", "SELECT a FROM answers WHERE x IN (1, 2)"])


@settings(max_examples=300, deadline=None)
@given(_base, st.sampled_from(sorted(TABLE_FUNCTIONS)), _case, _ws, _ws,
       st.sampled_from(["{sql}, {call}", "{sql} JOIN {call} USING (x)", "SELECT * FROM {call}",
                        "SELECT ({call})", "{sql} WHERE 1 IN (SELECT * FROM {call})", "DESCRIBE {call}",
                        "EXPLAIN SELECT * FROM {call}", "SELECT * FROM ({sql}) AS t, {call}"]),
       st.booleans())
def test_any_table_function_call_is_rejected(sql, name, case, ws1, ws2, shape, quoted):
    fn = f"`{name}`" if quoted else case(name)
    call = f"{fn}{ws1}({ws2}'x')"
    with pytest.raises(QueryRejected):
        check(shape.format(sql=sql, call=call), POLICY)


def _only_comments(text: str) -> bool:
    try:
        return all(t.text == ";" for t in tokenize(text))
    except QueryRejected:
        return False


@settings(max_examples=300, deadline=None)
@given(_base, _ws, st.one_of(st.text(min_size=1, max_size=40),
                             st.sampled_from(["DROP TABLE answers", "SELECT 2", "SET readonly = 0", " select 1"])))
def test_a_second_statement_is_rejected(sql, ws, second):
    assume(not _only_comments(second))  # "SELECT 1; -- bye" is one statement
    with pytest.raises(QueryRejected):
        check(f"{sql};{ws}{second}", POLICY)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_is_accepted_or_rejected_never_a_crash(text):
    try:
        statement = check(text, POLICY)
    except QueryRejected:
        return
    assert ";" not in [t.text for t in tokenize(statement)]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["DROP TABLE answers", "SETTINGS readonly=0", "INTO OUTFILE '/x'", "file('/etc/passwd')",
                        "; DELETE"]), st.booleans())
def test_keywords_inside_literals_and_comments_do_not_count(payload, in_comment):
    literal = payload.replace("'", "''")
    sql = f"SELECT 1 /* {payload} */" if in_comment else f"SELECT '{literal}' AS text"
    assert check(sql, POLICY).startswith("SELECT")
