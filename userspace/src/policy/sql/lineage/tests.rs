#![allow(clippy::unwrap_used)]

use super::*;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

fn lineage(sql: &str) -> Lineage {
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
    analyze(&stmts, Dialect::Postgres)
}

fn one(sql: &str) -> StatementLineage {
    let mut l = lineage(sql);
    assert_eq!(l.statements.len(), 1, "{sql}");
    l.statements.remove(0)
}

/// `table.column` (or `table.*`) of every source.
fn names(sources: &[Source]) -> Vec<String> {
    sources
        .iter()
        .map(|s| match &s.column {
            Some(c) => format!("{}.{c}", s.table),
            None => format!("{}.*", s.table),
        })
        .collect()
}

/// (flow, sources) of every output, `*` runs marked with a leading `*`.
fn outs(sql: &str) -> Vec<(Flow, Vec<String>)> {
    let l = one(sql);
    assert_eq!(l.unknown, None, "{sql}");
    l.outputs
        .iter()
        .map(|o| {
            let mut n = names(&o.lineage().sources);
            if matches!(o, Output::Many { .. }) {
                n.insert(0, "*".into());
            }
            (o.lineage().flow, n)
        })
        .collect()
}

fn flows(sql: &str) -> Vec<Flow> {
    outs(sql).into_iter().map(|(f, _)| f).collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

use Flow::{Composite, Computed, Plain};

#[test]
fn plain_references_stay_plain_through_subqueries_and_ctes() {
    assert_eq!(
        outs("SELECT email, c.id FROM customers c WHERE id = 1"),
        [
            (Plain, s(&["customers.email"])),
            (Plain, s(&["customers.id"]))
        ]
    );
    assert_eq!(
        outs("SELECT e FROM (SELECT email AS e FROM customers) s"),
        [(Plain, s(&["customers.email"]))]
    );
    assert_eq!(
        outs("WITH x AS (SELECT email FROM customers) SELECT x.email FROM x"),
        [(Plain, s(&["customers.email"]))]
    );
    assert_eq!(
        outs("SELECT (email) FROM public.customers"),
        [(Plain, s(&["customers.email"]))]
    );
    assert_eq!(
        outs("SELECT * FROM customers"),
        [(Plain, s(&["*", "customers.*"]))]
    );
    assert_eq!(
        outs("UPDATE customers SET name = 'x' WHERE id = 1 RETURNING email"),
        [(Plain, s(&["customers.email"]))]
    );
    let l = one("SELECT abalance FROM pgbench_accounts WHERE aid = 48213");
    assert_eq!(names(&l.compared), s(&["pgbench_accounts.aid"]));
    assert!(l.stored.is_empty() && !l.has_computed_outputs());
}

#[test]
fn every_leak_class_is_computed_or_composite() {
    for sql in [
        "SELECT upper(email) FROM customers",
        "SELECT email::int FROM customers",
        "SELECT CAST(email AS varchar) FROM customers",
        "SELECT email || '' FROM customers",
        "SELECT coalesce(email, 'x') FROM customers",
        "SELECT CASE WHEN email LIKE 'a%' THEN 'y' ELSE 'n' END FROM customers",
        "SELECT format('%s', email) FROM customers",
        "SELECT string_agg(email, ',') FROM customers",
        "SELECT min(email) FROM customers",
        "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM customers",
        "SELECT encode(email::bytea, 'hex') FROM customers",
        "SELECT reverse(email) FROM customers",
        "SELECT translate(email, 'abc', 'xyz') FROM customers",
        "SELECT substr(email, 1, 3), substring(email from 4 for 3) FROM customers",
        "SELECT (SELECT email FROM customers LIMIT 1)",
        "SELECT email FROM customers UNION SELECT 'x'",
        "SELECT email COLLATE \"C\" FROM customers",
        "SELECT lag(email) OVER (ORDER BY id) FROM customers",
        "SELECT e FROM (SELECT lower(email) AS e FROM customers) s",
        "SELECT x FROM customers, LATERAL upper(email) AS x",
        "SELECT email FROM customers c1 FULL JOIN customers c2 USING (email)",
        "SELECT column1 FROM (VALUES ((SELECT email FROM customers LIMIT 1))) v",
        "WITH RECURSIVE r(e) AS (SELECT email FROM customers UNION SELECT e || 'x' FROM r) SELECT e FROM r",
        "WITH d AS (DELETE FROM customers RETURNING email) SELECT email FROM d",
        "SELECT trim(both 'x' from email) FROM customers",
        "SELECT position('@' in email) FROM customers",
    ] {
        let o = outs(sql);
        assert!(
            o.iter()
                .any(|(f, src)| *f != Plain && src.iter().any(|x| x == "customers.email")),
            "{sql}: {o:?}"
        );
    }
    for sql in [
        "SELECT c FROM customers c",
        "SELECT row_to_json(c) FROM customers c",
        "SELECT to_jsonb(c.*) FROM customers c",
        "SELECT json_agg(c) FROM customers c",
        "SELECT array_agg(email) FROM customers",
        "SELECT ARRAY[email] FROM customers",
        "SELECT ROW(id, email) FROM customers",
        "SELECT (id, email) FROM customers",
        "SELECT email::json FROM customers",
        "SELECT json_build_object('e', email) FROM customers",
    ] {
        let o = outs(sql);
        assert!(
            o.iter().any(|(f, src)| *f == Composite
                && src
                    .iter()
                    .any(|x| x == "customers.email" || x == "customers.*")),
            "{sql}: {o:?}"
        );
    }
}

#[test]
fn comparisons_are_not_outputs() {
    let l = one("SELECT id FROM customers c JOIN orders o ON o.cid = c.id \
         WHERE email LIKE 'a%' GROUP BY id HAVING count(card) > 1 ORDER BY name");
    assert_eq!(l.outputs.len(), 1);
    assert_eq!(l.outputs[0].lineage().flow, Plain);
    let c = names(&l.compared);
    for want in [
        "customers.email",
        "customers.card",
        "customers.name",
        "orders.cid",
    ] {
        assert!(c.contains(&want.to_string()), "{want}: {c:?}");
    }
    // count() and EXISTS reveal comparisons, not values.
    let l =
        one("SELECT count(email), EXISTS (SELECT 1 FROM customers WHERE ssn = '1') FROM customers");
    assert_eq!(l.outputs[0].lineage().sources, []);
    assert_eq!(l.outputs[1].lineage().sources, []);
    assert!(names(&l.compared).contains(&"customers.ssn".to_string()));
    // ORDER BY a result column's position or name.
    let l = one("SELECT upper(name) AS u FROM customers ORDER BY u, 1");
    assert!(names(&l.compared).contains(&"customers.name".to_string()));
}

#[test]
fn stored_and_unknown() {
    for (sql, into) in [
        ("INSERT INTO t SELECT email FROM customers", "an INSERT"),
        ("UPDATE customers SET notes = email", "an UPDATE"),
        (
            "CREATE TABLE t AS SELECT email FROM customers",
            "CREATE TABLE … AS",
        ),
        ("SELECT email INTO t FROM customers", "SELECT INTO"),
        (
            "SELECT set_config('x.y', email, false) FROM customers",
            "set_config()",
        ),
        ("SELECT pg_notify('c', email) FROM customers", "pg_notify()"),
        (
            "DECLARE c CURSOR FOR SELECT upper(email) FROM customers",
            "a cursor",
        ),
        (
            "COPY (SELECT email FROM customers) TO '/tmp/x'",
            "a COPY to a file or program",
        ),
    ] {
        let l = one(sql);
        assert!(
            l.stored.iter().any(|st| st.into == into
                && names(std::slice::from_ref(&st.source)) == ["customers.email"]),
            "{sql}: {:?}",
            l.stored
        );
    }
    // Written tables: an error about a written row quotes it.
    for sql in [
        "UPDATE customers SET card = 'x' WHERE id = 1",
        "DELETE FROM customers WHERE id = 1",
        "INSERT INTO customers (id) VALUES (1)",
        "COPY customers FROM STDIN",
    ] {
        assert_eq!(names(&one(sql).written), ["customers.*"], "{sql}");
    }
    // A cursor's plain columns keep their origin at FETCH.
    assert!(
        one("DECLARE c CURSOR FOR SELECT email FROM customers")
            .stored
            .is_empty()
    );
    for sql in [
        "SELECT my_func(email) FROM customers",
        "SELECT public.upper(email) FROM customers",
        "SELECT * FROM customers, my_srf(1) f",
        "SELECT query_to_xml('select 1', true, false, '')",
        "SELECT table_to_xml('customers', true, false, '')",
        "SELECT x.y FROM customers",
        "EXECUTE p",
        "SELECT email OPERATOR(public.+) 1 FROM customers",
        "SELECT most_common_vals FROM pg_stats WHERE tablename = 'customers'",
        "SELECT histogram_bounds FROM pg_catalog.pg_stats",
    ] {
        let l = lineage(sql);
        assert!(l.unknown().is_some(), "{sql}: {l:?}");
    }
    // Statements that move no data.
    for sql in [
        "BEGIN",
        "COMMIT",
        "SET search_path = public",
        "SHOW work_mem",
        "LOCK TABLE t",
    ] {
        let l = lineage(sql);
        assert_eq!(l.unknown(), None, "{sql}");
        assert!(l.statements[0].outputs.is_empty(), "{sql}");
    }
    // Built-ins with no table data are fine.
    assert_eq!(
        lineage("SELECT pg_sleep(0), now(), current_user, version()").unknown(),
        None
    );
}

#[test]
fn names_resolve_like_the_server() {
    // The inner `email` is the subquery's computed column, not a table column.
    assert_eq!(
        flows("SELECT email FROM (SELECT upper(email) AS email FROM customers) s"),
        [Computed]
    );
    // A function result's name.
    assert_eq!(
        outs("SELECT upper FROM (SELECT upper(email) FROM customers) s"),
        [(Computed, s(&["customers.email"]))]
    );
    // An alias list renames the first columns; after `*`, a name says nothing.
    let o = outs("SELECT c.a FROM (SELECT * FROM customers) AS c(a, b)");
    assert_eq!(o, [(Plain, s(&["customers.*"]))]);
    let o = outs("SELECT upper(c.e) FROM customers AS c(i, n, e)");
    assert_eq!(o, [(Computed, s(&["customers.*"]))]);
    // Unqualified in a join: either table.
    let o = outs("SELECT upper(name) FROM customers JOIN orders USING (id)");
    assert_eq!(o, [(Computed, s(&["customers.name", "orders.name"]))]);
    // Correlated: the outer table.
    let o =
        outs("SELECT (SELECT upper(c.email) FROM orders o WHERE o.cid = c.id) FROM customers c");
    assert_eq!(o, [(Computed, s(&["customers.email"]))]);
    // `(c).email` is the column (or a field of a column `c`).
    let o = outs("SELECT (c).email FROM customers c");
    assert_eq!(
        o,
        [(
            Computed,
            s(&["customers.*", "customers.c", "customers.email"])
        )]
    );
    // ONLY t
    assert_eq!(
        outs("SELECT upper(email) FROM ONLY customers"),
        [(Computed, s(&["customers.email"]))]
    );
}

#[test]
fn star_expansion_and_set_operations() {
    assert_eq!(
        outs("SELECT *, upper(email) FROM customers"),
        [
            (Plain, s(&["*", "customers.*"])),
            (Computed, s(&["customers.email"]))
        ]
    );
    assert_eq!(
        outs("SELECT s.* FROM (SELECT id, upper(email) FROM customers) s"),
        [
            (Plain, s(&["customers.id"])),
            (Computed, s(&["customers.email"]))
        ]
    );
    assert_eq!(
        outs("SELECT * FROM customers UNION SELECT * FROM customers"),
        [(Computed, s(&["*", "customers.*"]))]
    );
    assert_eq!(
        outs("SELECT id, email FROM a UNION ALL SELECT id, name FROM b"),
        [
            (Computed, s(&["a.id", "b.id"])),
            (Computed, s(&["a.email", "b.name"]))
        ]
    );
    // `TABLE t` through the classifier, which rewrites it.
    let f = crate::policy::sql::classify(
        "TABLE customers ORDER BY 1",
        crate::model::Dialect::Postgres,
        &crate::policy::sql::Limits::default(),
    );
    assert_eq!(f.lineage.statements.len(), 1);
    assert_eq!(
        names(&f.lineage.statements[0].outputs[0].lineage().sources),
        ["customers.*"]
    );
}

fn rule_for<'a>(
    rules: &'a [(&'a str, &'a str, ComputedMasking, ComparedMasking)],
) -> impl Fn(&Source) -> Option<ColumnRule<'a>> {
    move |src: &Source| {
        rules.iter().find_map(|(name, col, computed, compared)| {
            let (t, c) = col.split_once('.').unwrap();
            let hit = *src.table == *t && src.column.as_deref().is_none_or(|x| x == c);
            hit.then_some(ColumnRule {
                name,
                computed: *computed,
                compared: *compared,
            })
        })
    }
}

#[test]
fn a_masked_column_through_a_subquery_or_cte_is_refused_where_the_server_names_the_alias() {
    let rules = [(
        "email-rule",
        "customers.email",
        ComputedMasking::Redact,
        ComparedMasking::Allow,
    )];
    let first = Some(ColumnRule {
        name: "email-rule",
        computed: ComputedMasking::Redact,
        compared: ComparedMasking::Allow,
    });
    for sql in [
        "SELECT t.email FROM (SELECT email FROM customers) t",
        "SELECT e FROM (SELECT email AS e FROM customers) t",
        "WITH c AS (SELECT email FROM customers) SELECT email FROM c",
        "WITH c AS (SELECT * FROM customers) SELECT * FROM c",
        "SELECT * FROM (SELECT * FROM customers) t",
        "SELECT * FROM (SELECT * FROM (SELECT id, email FROM customers) a) b",
        "SELECT x.* FROM customers c JOIN (SELECT id, email FROM customers) x ON x.id = c.id",
    ] {
        let l = lineage(sql);
        // PostgreSQL reports the table column: masked as the column itself.
        assert!(
            judge(&l, rule_for(&rules), first, |_| false).is_ok(),
            "{sql}"
        );
        let r = judge(&l, rule_for(&rules), first, |l| l.derived).unwrap_err();
        let column = r.column.as_deref().unwrap_or_default();
        assert!(
            matches!(column, "customers.email" | "customers.*"),
            "{sql}: {r}"
        );
        assert!(r.why.contains("subquery, CTE or view"), "{sql}: {r}");
    }
    for sql in [
        "SELECT email FROM customers",
        "SELECT c.* FROM customers c",
        "SELECT t.id FROM (SELECT id, email FROM customers) t",
        "SELECT id FROM customers WHERE email IN (SELECT email FROM customers)",
        "WITH c AS (SELECT id FROM customers) SELECT id FROM c",
    ] {
        assert!(
            judge(&lineage(sql), rule_for(&rules), first, |l| l.derived).is_ok(),
            "{sql}"
        );
    }
}

#[test]
fn judging_refuses_what_cannot_be_masked() {
    use ComparedMasking as Cmp;
    use ComputedMasking as Cpt;
    let refuse = [("email-rule", "customers.email", Cpt::Refuse, Cmp::Allow)];
    let redact = [("email-rule", "customers.email", Cpt::Redact, Cmp::Refuse)];
    let judge_with = |sql: &str, rules: &[(&str, &str, Cpt, Cmp)]| {
        let l = lineage(sql);
        let first = rules.first().map(|(n, _, a, b)| ColumnRule {
            name: n,
            computed: *a,
            compared: *b,
        });
        judge(&l, rule_for(rules), first, |_| false)
    };
    assert!(judge_with("SELECT email FROM customers", &refuse).is_ok());
    assert!(judge_with("SELECT upper(name) FROM customers", &refuse).is_ok());
    assert!(judge_with("SELECT id FROM customers WHERE email = 'x'", &refuse).is_ok());
    let r = judge_with("SELECT upper(email) FROM customers", &refuse).unwrap_err();
    assert_eq!(r.rule, "email-rule");
    assert_eq!(r.column.as_deref(), Some("customers.email"));
    assert!(r.to_string().contains("result column 1 (\"upper\")"), "{r}");
    // Redact lets a computed value through (replaced at the result) but not a row.
    assert!(judge_with("SELECT upper(email) FROM customers", &redact).is_ok());
    let r = judge_with("SELECT row_to_json(c) FROM customers c", &redact).unwrap_err();
    assert!(r.to_string().contains("row, array or JSON"), "{r}");
    let r = judge_with("SELECT id FROM customers WHERE email = 'x'", &redact).unwrap_err();
    assert!(r.to_string().contains("compared"), "{r}");
    let r = judge_with("UPDATE customers SET notes = email", &redact).unwrap_err();
    assert!(r.to_string().contains("an UPDATE"), "{r}");
    let r = judge_with("SELECT f(1)", &redact).unwrap_err();
    assert!(r.to_string().contains("f()"), "{r}");
    // No column rule active: nothing to check.
    assert!(
        judge(
            &lineage("SELECT f(email) FROM customers"),
            |_| None::<ColumnRule<'_>>,
            None,
            |_| false
        )
        .is_ok()
    );
}

#[test]
fn redactions_by_position() {
    let rule = |src: &Source| {
        (src.column.as_deref() == Some("email") || src.column.is_none()).then_some(7u8)
    };
    let l = lineage("SELECT *, upper(email), upper(name) FROM customers");
    // Four table columns (origins reported), then two computed.
    let computed = [false, false, false, false, true, true];
    assert_eq!(
        redactions(&l, 0, &computed, rule, Some(7)),
        [None, None, None, None, Some(7), None]
    );
    // A plain reference the server did not report an origin for is replaced too.
    let l = lineage("SELECT email FROM customers");
    assert_eq!(redactions(&l, 0, &[true], rule, Some(7)), [Some(7)]);
    assert_eq!(redactions(&l, 0, &[false], rule, Some(7)), [None]);
    // Two runs of unknown width: every computed column.
    let l = lineage("SELECT a.*, b.*, upper(a.email) FROM customers a, customers b");
    assert_eq!(
        redactions(&l, 0, &[false, false, true, false, true], rule, Some(7)),
        [None, None, Some(7), None, Some(7)]
    );
    // Several statements: each result set by its statement's index.
    let l = lineage("SELECT 1; SELECT upper(email) FROM customers");
    assert_eq!(redactions(&l, 0, &[true], rule, Some(7)), [None]);
    assert_eq!(redactions(&l, 1, &[true], rule, Some(7)), [Some(7)]);
    // An index that names no statement with rows: every computed column.
    assert_eq!(redactions(&l, 2, &[true], rule, Some(7)), [Some(7)]);
    let l = lineage("SET x = 1; SELECT upper(email) FROM customers");
    assert_eq!(redactions(&l, 0, &[true], rule, Some(7)), [Some(7)]);
    let l = lineage("SELECT 1; SELECT upper(name) FROM orders");
    assert_eq!(
        redactions(&l, 0, &[true], |_: &Source| None::<u8>, Some(7)),
        [None]
    );
    // Unknown lineage: every computed column.
    let l = lineage("SELECT f(1), id FROM orders");
    assert_eq!(
        redactions(&l, 0, &[true, false], |_: &Source| None::<u8>, Some(7)),
        [Some(7), None]
    );
}

/// Ordered-set aggregates return the ordered values; `c.*` inside an expression is the row.
#[test]
fn ordered_set_aggregates_and_row_wildcards_flow_into_results() {
    for (sql, src) in [
        (
            "SELECT mode() WITHIN GROUP (ORDER BY email) FROM customers",
            "customers.email",
        ),
        (
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY email) FROM customers",
            "customers.email",
        ),
        ("SELECT (c.*)::text FROM customers c", "customers.*"),
        ("SELECT c::text FROM customers c", "customers.*"),
        (
            "SELECT t.x FROM customers, unnest(ARRAY[email]) AS t(x)",
            "customers.email",
        ),
        (
            "VALUES ((SELECT email FROM customers LIMIT 1))",
            "customers.email",
        ),
    ] {
        let o = outs(sql);
        assert!(
            o.iter()
                .any(|(f, s)| *f != Flow::Plain && s.iter().any(|x| x == src)),
            "{sql}: {o:?}"
        );
    }
}

/// A search path with pg_catalog after another schema lets a function shadow a built-in:
/// the statement that sets it cannot be traced; other paths can.
#[test]
fn search_paths_that_shadow_builtins_are_untraceable() {
    for sql in [
        "SET search_path = public, pg_catalog",
        "SET search_path TO 'public, pg_catalog'",
        "SELECT set_config('search_path', 'public,pg_catalog', false)",
        "SELECT set_config('search_path', current_user, false)",
        "SELECT set_config(current_user, 'x', false)",
    ] {
        assert!(lineage(sql).unknown().is_some(), "{sql}");
    }
    for sql in [
        "SET search_path = public",
        "SET search_path = pg_catalog, public",
        "SET search_path TO \"$user\", public",
        "SELECT set_config('search_path', 'crm, public', false)",
        "SELECT set_config('application_name', 'x', false)",
    ] {
        assert_eq!(lineage(sql).unknown(), None, "{sql}");
    }
}

/// MySQL's backticks quote without making a name case-sensitive: the masked column is seen
/// whatever its case (double quotes stay exact, as PostgreSQL resolves them).
#[test]
fn mysql_backticks_fold_like_unquoted_names() {
    let stmts = Parser::parse_sql(
        &sqlparser::dialect::MySqlDialect {},
        "SELECT UPPER(`EMAIL`) FROM `APP`.`Customers`",
    )
    .unwrap();
    let l = analyze(&stmts, Dialect::Mysql);
    let o = &l.statements[0].outputs[0];
    assert_eq!(o.lineage().flow, Computed);
    assert_eq!(names(&o.lineage().sources), s(&["customers.email"]));
    assert_eq!(
        outs(r#"SELECT "Email" FROM "Customers""#),
        [(Plain, s(&["Customers.Email"]))]
    );
}

/// The lineage of `sql` as the classifier makes it (its token rewrites included).
fn classified(sql: &str, d: Dialect) -> Lineage {
    crate::policy::sql::classify(sql, d, &crate::policy::Limits::default()).lineage
}

/// Every source of every output, stored value and comparison, as `table.column`.
fn all_sources(l: &Lineage) -> Vec<String> {
    let mut v = Vec::new();
    for st in &l.statements {
        for o in &st.outputs {
            v.extend(names(&o.lineage().sources));
        }
        v.extend(names(&st.compared));
        v.extend(
            st.stored
                .iter()
                .map(|x| names(std::slice::from_ref(&x.source))[0].clone()),
        );
    }
    v
}

/// `U&"\0065mail"` is the column `email` to PostgreSQL; sqlparser alone reads `U & "…"`.
#[test]
fn unicode_escaped_identifiers_are_the_columns_they_spell() {
    for (sql, want) in [
        (
            r#"SELECT U&"\0065mail" || '' FROM customers"#,
            "customers.email",
        ),
        (
            r#"SELECT u&"\+000065mail" FROM customers"#,
            "customers.email",
        ),
        (
            r#"SELECT U&"!0073sn" UESCAPE '!' FROM customers"#,
            "customers.ssn",
        ),
        (
            r#"SELECT U&"\0073sn" /* c */ UESCAPE '\' FROM customers"#,
            "customers.ssn",
        ),
        (
            r#"SELECT replace(c.U&"\0065mail", '@', '') FROM customers c"#,
            "customers.email",
        ),
        (r#"SELECT x FROM customers AS U&"\0063"(x)"#, "customers.*"),
    ] {
        let l = classified(sql, Dialect::Postgres);
        assert_eq!(l.unknown(), None, "{sql}");
        assert_eq!(all_sources(&l), [want], "{sql}");
    }
    // Written apart, `u & "x"` is an operator between two columns.
    let l = classified(r#"SELECT u & "x" FROM t"#, Dialect::Postgres);
    assert_eq!(all_sources(&l), ["t.u", "t.x"]);
    // What the server rejects, or what sqlparser cannot decode as the server does, is unknown.
    for sql in [
        r#"SELECT U&"\00" FROM customers"#,
        r#"SELECT U&"\D800" FROM customers"#,
        r#"SELECT U&"" FROM customers"#,
        r#"SELECT U&"x" UESCAPE 'a' FROM customers"#,
        r#"SELECT U&"x" UESCAPE FROM customers"#,
        r#"SELECT U&'d!0061t' UESCAPE '!'"#,
    ] {
        let f = crate::policy::sql::classify(sql, Dialect::Postgres, &Default::default());
        assert_eq!(f.class, crate::model::Class::Unknown, "{sql}");
    }
    // A surrogate pair is one character.
    let l = classified(r#"SELECT U&"\D83D\DE00" FROM t"#, Dialect::Postgres);
    assert_eq!(all_sources(&l), ["t.\u{1F600}"]);
}

/// The classifier sees the function a `U&"…"` name spells.
#[test]
fn unicode_escaped_function_names_are_classified() {
    let f = crate::policy::sql::classify(
        r#"SELECT U&"pg_terminate_backen\0064"(1)"#,
        Dialect::Postgres,
        &Default::default(),
    );
    assert_eq!(f.class, crate::model::Class::Admin, "{f:?}");
}

/// PostgreSQL folds only ASCII letters of unquoted names and cuts names to 63 bytes.
#[test]
fn postgres_names_fold_ascii_only_and_are_cut_to_63_bytes() {
    // `É` is the column `"É"` (email), not the decoy `é`.
    assert_eq!(
        outs(r#"SELECT É || '' FROM (SELECT email AS "É", 'decoy' AS é FROM customers) d"#),
        [(Computed, s(&["customers.email"]))]
    );
    assert_eq!(
        outs("SELECT Ä.email || '' FROM (SELECT 'x' AS email) ä, customers Ä"),
        [(Computed, s(&["customers.email"]))]
    );
    assert_eq!(
        outs("SELECT EMAIL FROM Customers"),
        [(Plain, s(&["customers.email"]))]
    );
    // 63 `a`s and a `b` is the same name as 63 `a`s and a `z`.
    let a = "a".repeat(63);
    let sql = format!(
        "SELECT x FROM (SELECT 'decoy' AS {a}z) o, \
         LATERAL (SELECT {a}z || '' AS x FROM (SELECT email AS {a}b FROM customers) d) l"
    );
    assert_eq!(outs(&sql), [(Computed, s(&["customers.email"]))]);
    // Cut on a character boundary: 62 `a`s and a two-byte `é` stay whole, a third is cut.
    let sql = format!(r#"SELECT "{}éé" FROM t"#, &a[..61]);
    assert_eq!(outs(&sql), [(Plain, vec![format!("t.{}é", &a[..61])])]);
}

/// The name of the first output.
fn name_of(sql: &str) -> Option<String> {
    match &one(sql).outputs[0] {
        Output::One { name, .. } => name.as_deref().map(Into::into),
        Output::Many { .. } => None,
    }
}

/// PostgreSQL names a CASE after its ELSE branch when that is a column or a function, and a
/// cast of a weaker name after its type: a reference must find the column it names.
#[test]
fn case_columns_are_named_as_the_server_names_them() {
    let sql = "SELECT x FROM (SELECT 'decoy' AS email) o, \
         LATERAL (SELECT email || '' AS x \
                  FROM (SELECT CASE WHEN false THEN NULL ELSE email END FROM customers) d) l";
    assert_eq!(outs(sql), [(Computed, s(&["customers.email"]))]);
    assert_eq!(
        name_of("SELECT CASE WHEN true THEN 1 ELSE lower(email) END FROM customers"),
        Some("lower".into())
    );
    assert_eq!(
        name_of("SELECT CASE WHEN true THEN email END FROM customers"),
        Some("case".into())
    );
    // `CASE … END::text` is named `text`: not known here, so any name may reach it.
    let sql = "SELECT x FROM (SELECT 'decoy' AS \"case\") o, \
         LATERAL (SELECT \"text\" || '' AS x \
                  FROM (SELECT CASE WHEN false THEN '' ELSE 'a' || email END::text \
                        FROM customers) d) l";
    assert_eq!(outs(sql), [(Computed, s(&["customers.email"]))]);
    for sql in [
        "SELECT CASE WHEN true THEN 1 END::text FROM t",
        "SELECT true",
    ] {
        assert_eq!(name_of(sql), None, "{sql}");
    }
}

fn mysql(sql: &str) -> Lineage {
    classified(sql, Dialect::Mysql)
}

/// MySQL's `@v := x` keeps `x` for a later `SELECT @v`: stored, as `SELECT … INTO @v` is.
#[test]
fn mysql_user_variable_assignments_store_their_value() {
    for sql in [
        "SELECT id FROM customers WHERE (@v := CONCAT_WS(',', @v, REPLACE(email, '@', ' at '))) IS NOT NULL",
        "SELECT COUNT(@v := email) FROM customers",
        "SELECT id FROM customers ORDER BY (@v := email)",
        "SELECT @v := email FROM customers",
    ] {
        let l = mysql(sql);
        let st = &l.statements[0];
        assert!(
            st.stored.iter().any(|x| x.into.contains("user variable")
                && names(std::slice::from_ref(&x.source)) == ["customers.email"]),
            "{sql}: {st:?}"
        );
    }
    let l = mysql("SELECT email INTO @v FROM customers");
    assert!(!l.statements[0].stored.is_empty());
}

/// MySQL tells `c` and `C` apart as aliases (lower_case_table_names=0); the lineage folds
/// them, so a statement naming relations that differ only in case cannot be traced.
#[test]
fn mysql_relation_names_differing_only_in_case_are_untraceable() {
    for sql in [
        "SELECT CONCAT(C.email, '') AS leaked FROM (SELECT 'decoy' AS email) c, customers C",
        "SELECT REPLACE(C.email, '@', ' at ') FROM (SELECT 'decoy' AS email) c, customers C",
        "SELECT (SELECT CONCAT(C.email, '') FROM (SELECT 'x' AS email) c) FROM customers C",
        "WITH CUSTOMERS AS (SELECT 'x' AS email) SELECT CONCAT(email, '') FROM customers",
        "SELECT CONCAT(c.email, '') FROM customers C",
        "SELECT C.* FROM customers c",
        "SELECT `C`.email FROM customers c",
    ] {
        assert!(mysql(sql).unknown().is_some(), "{sql}");
    }
    for sql in [
        "SELECT CONCAT(C.email, '') FROM customers C",
        "SELECT CONCAT(`C`.email, '') FROM customers C",
        "SELECT CONCAT(EMAIL, Email) FROM customers c",
    ] {
        let l = mysql(sql);
        assert_eq!(l.unknown(), None, "{sql}");
        assert_eq!(all_sources(&l), ["customers.email"], "{sql}");
    }
    // PostgreSQL folds unquoted aliases: `C` is `c`.
    let l = classified("SELECT C.email || '' FROM customers c", Dialect::Postgres);
    assert_eq!(l.unknown(), None);
}

/// MySQL names an expression after its text: a reference finds no name known here.
#[test]
fn mysql_expression_columns_have_no_known_name() {
    let l = mysql(
        "SELECT (SELECT CONCAT(`concat(email)`, '') FROM (SELECT concat(email) FROM customers) d) \
         FROM (SELECT 'decoy' AS `concat(email)`) o",
    );
    assert_eq!(l.unknown(), None);
    assert!(all_sources(&l).contains(&"customers.email".to_string()));
}

/// MariaDB's engine-independent statistics keep each column's minimum and maximum value, and
/// MySQL's histograms sampled values: reading them cannot be traced to the columns.
#[test]
fn mysql_statistics_tables_are_untraceable() {
    for sql in [
        "SELECT min_value, max_value FROM mysql.column_stats WHERE column_name = 'email'",
        "SELECT histogram FROM information_schema.COLUMN_STATISTICS",
        "SELECT * FROM column_stats",
        "SELECT argument FROM mysql.general_log",
        "SELECT info FROM information_schema.PROCESSLIST",
        "SELECT sql_text FROM performance_schema.events_statements_history_long",
        "SELECT processlist_info FROM performance_schema.threads",
    ] {
        assert!(mysql(sql).unknown().is_some(), "{sql}");
    }
    assert!(mysql("SELECT * FROM mysql.user_stats").unknown().is_none());
    // PostgreSQL tables of those names are plain tables.
    assert!(lineage("SELECT * FROM column_stats").unknown().is_none());
}

/// In a RECURSIVE list a CTE may name one defined after it; read in order, that name would
/// pass for a table and the later CTE's columns would never be traced.
#[test]
fn recursive_ctes_naming_a_later_cte_are_untraceable() {
    for sql in [
        "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT translate(email, '@.', '#,') AS e FROM customers) SELECT e FROM a",
        "WITH RECURSIVE a AS (SELECT e FROM b UNION SELECT e FROM a), b AS (SELECT email AS e FROM customers) SELECT e FROM a",
    ] {
        assert!(lineage(sql).unknown().is_some(), "{sql}");
    }
    let l = mysql(
        "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT email FROM customers) SELECT email FROM a",
    );
    assert!(l.unknown().is_some());
    // In order, as before: traced.
    assert!(
        lineage("WITH RECURSIVE b AS (SELECT email AS e FROM customers), a AS (SELECT * FROM b) SELECT e FROM a")
            .unknown()
            .is_none()
    );
}

/// A computed column of a CTE or derived table is evaluated by the server whether or not the
/// outer query reads it (DISTINCT, MATERIALIZED), and a failing cast shows its input: the
/// masked column counts as compared (errors are cut, `compared: refuse` applies).
#[test]
fn computed_columns_the_outer_query_drops_still_count() {
    for sql in [
        "SELECT id FROM (SELECT DISTINCT id, translate(email, '@.', '#,')::int AS v FROM customers) s",
        "WITH x AS MATERIALIZED (SELECT id, email::int AS v FROM customers) SELECT id FROM x",
        "SELECT id FROM (SELECT DISTINCT id, CASE WHEN email LIKE 'a%' THEN 1/0 END AS v FROM customers) s",
    ] {
        let st = one(sql);
        assert!(
            names(&st.compared).contains(&"customers.email".to_string()),
            "{sql}: {:?}",
            names(&st.compared)
        );
    }
    // A plain column carried through computes nothing: not counted.
    let st = one("SELECT id FROM (SELECT id, email FROM customers) s");
    assert!(!names(&st.compared).contains(&"customers.email".to_string()));
}

/// A comparison against generated rows tells one comparison per answer row, so two series
/// spell a value out in one answer; a window's ordering or an aggregate's FILTER decides the
/// value it returns. Those flows are refused like values sent out or computed.
#[test]
fn comparisons_multiplied_by_generated_rows_or_folded_into_values_are_flows() {
    let stored = |l: &StatementLineage| -> Vec<String> {
        l.stored
            .iter()
            .flat_map(|st| names(std::slice::from_ref(&st.source)))
            .collect()
    };
    let l = one(
        "SELECT c.id, g.i, h.n FROM customers c, generate_series(1, 64) g(i), generate_series(0, 255) h(n) \
         WHERE ascii(substr(c.email, g.i, 1)) = h.n",
    );
    assert_eq!(stored(&l), ["customers.email"]);
    let l = one(
        "SELECT c.id, v.n FROM customers c JOIN (VALUES (97), (98)) v(n) ON ascii(c.email) = v.n",
    );
    assert_eq!(stored(&l), ["customers.email"]);
    let m = mysql(
        "SELECT c.id, a.seq, b.seq FROM customers c, seq_1_to_64 a, seq_0_to_255 b \
         WHERE ascii(substr(c.email, a.seq, 1)) = b.seq",
    );
    assert_eq!(stored(&m.statements[0]), ["customers.email"]);
    for sql in [
        "SELECT row_number() OVER (ORDER BY email) FROM customers",
        "SELECT count(*) FILTER (WHERE email LIKE 'a%'), count(*) FILTER (WHERE email LIKE 'b%') FROM customers",
    ] {
        let l = one(sql);
        assert!(
            l.outputs.iter().any(|o| o.lineage().flow != Plain
                && names(&o.lineage().sources).contains(&"customers.email".to_string())),
            "{sql}: {:?}",
            l.outputs
        );
    }
    // A condition over one relation and constants, or a join on other columns, stays a
    // comparison.
    let l = one(
        "SELECT o.id FROM customers c JOIN orders o ON o.cid = c.id WHERE c.email = $1 AND o.id > 3",
    );
    assert!(l.stored.is_empty(), "{:?}", l.stored);
    assert!(names(&l.compared).contains(&"customers.email".to_string()));
}
