//! The manual pages: vipd(8) from the command-line definitions, and
//! vipd.toml(5) from the README's key tables, so that the README stays the
//! one place each key is described.

/// One row of a README key table: the key cell, its default, its meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// The key (or keys) as the table names them.
    pub key: String,
    /// The default.
    pub default: String,
    /// What it does.
    pub meaning: String,
}

/// One key table and the heading it sits under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTable {
    /// The nearest heading above the table, or the sentence that
    /// introduces it when that names a section (`The keys of [[vrrp]]:`).
    pub title: String,
    /// Its rows.
    pub rows: Vec<KeyRow>,
}

/// Splits a Markdown table row into its cells (a `|` inside backticks
/// belongs to the cell).
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = Vec::new();
    let (mut cell, mut code) = (String::new(), false);
    for c in inner.chars() {
        match c {
            '`' => {
                code = !code;
                cell.push(c);
            }
            '|' if !code => out.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
    }
    out.push(cell.trim().to_string());
    out
}

/// Every `| key | default | meaning |` table of `readme`, in order.
pub fn key_tables(readme: &str) -> Vec<KeyTable> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut tables = Vec::new();
    let mut title = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(h) = line.strip_prefix("### ").or_else(|| line.strip_prefix("## ")) {
            title = h.trim().to_string();
        } else if let Some(at) = line.find("The keys of ") {
            title = line[at..].trim_end_matches(':').to_string();
        }
        if cells(line) == ["key", "default", "meaning"] {
            let mut rows = Vec::new();
            i += 2; // the header and the |---| line
            while let Some(row) = lines.get(i).filter(|l| l.starts_with('|')) {
                if let [key, default, meaning] = cells(row).as_slice() {
                    rows.push(KeyRow { key: key.clone(), default: default.clone(), meaning: meaning.clone() });
                }
                i += 1;
            }
            tables.push(KeyTable { title: title.clone(), rows });
            continue;
        }
        i += 1;
    }
    tables
}

/// Markdown inline text as roff: `code` in bold, the rest escaped.
fn roff_inline(text: &str) -> String {
    let mut out = String::new();
    let mut code = false;
    for c in text.chars() {
        match c {
            '`' => {
                out.push_str(if code { "\\fR" } else { "\\fB" });
                code = !code;
            }
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            _ => out.push(c),
        }
    }
    if code {
        out.push_str("\\fR");
    }
    // A line must not start with a control character.
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// vipd.toml(5), from the README's key tables.
pub fn vipd_toml_5(readme: &str, version: &str) -> String {
    let mut out = format!(
        ".TH VIPD.TOML 5 \"\" \"vipd {version}\" \"File Formats\"\n\
         .SH NAME\nvipd.toml \\- configuration of vipd\n\
         .SH DESCRIPTION\n\
         One TOML file per host (\\fB/etc/vipd/vipd.toml\\fR): \\fB[control]\\fR, \\fB[[vrrp]]\\fR instances, \
         \\fB[[http]]\\fR listeners, \\fB[[track_script]]\\fR and \\fB[[sync_group]]\\fR sections. \
         \\fBvipd check\\fR validates a file and names the file, line, column, key and value of an error; \
         \\fBvipd reload\\fR applies what can change in place. The keys, their defaults and meanings:\n"
    );
    for table in key_tables(readme) {
        out.push_str(&format!(".SH {}\n", roff_inline(&table.title)));
        for row in table.rows {
            out.push_str(&format!(
                ".TP\n{} (default: {})\n{}\n",
                roff_inline(&row.key),
                roff_inline(&row.default),
                roff_inline(&row.meaning)
            ));
        }
    }
    out.push_str(".SH SEE ALSO\n\\fBvipd\\fR(8); the README in /usr/share/doc/vipd, and the examples there.\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = include_str!("../README.md");

    #[test]
    fn tables_are_found_with_their_titles_and_rows() {
        let text = "## Running it\n\nThe keys of `[[vrrp]]`:\n\n| key | default | meaning |\n|---|---|---|\n\
                    | `name` | required | name in logs |\n| `a|b` | `1` | x |\n\nprose\n\n### Other\n\n\
                    | key | default | meaning |\n|---|---|---|\n| `k` | none | .dot first |\n";
        let t = key_tables(text);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].title, "The keys of `[[vrrp]]`");
        assert_eq!(t[0].rows[1].key, "`a|b`", "a bar inside code stays in its cell");
        assert_eq!(t[1].title, "Other");
        let page = vipd_toml_5(text, "0.1.0");
        assert!(page.starts_with(".TH VIPD.TOML 5"));
        assert!(page.contains(".TP\n\\fBname\\fR (default: required)\nname in logs\n"), "{page}");
        assert!(page.contains("\n\\&.dot first\n"), "a line starting with a dot is escaped: {page}");
    }

    /// The keys each section accepts, as the parser's refusal of an
    /// unknown one lists them.
    fn accepted_keys(section: &str) -> Vec<String> {
        let text = format!("{section}\nzz_not_a_key = 1\n");
        let e = crate::config::parse(&text, std::path::Path::new("t.toml")).expect_err("unknown key").to_string();
        let listed = e.split_once("expected").map_or("", |(_, rest)| rest);
        listed.split('`').skip(1).step_by(2).map(str::to_string).collect()
    }

    #[test]
    fn every_key_the_parser_accepts_is_in_a_readme_table() {
        let documented: Vec<String> = key_tables(README).into_iter().flat_map(|t| t.rows).map(|r| r.key).collect();
        let sections =
            ["[control]", "[[vrrp]]", "[[http]]", "[[http]]\n[http.health]", "[[track_script]]", "[[sync_group]]"];
        for section in sections {
            let keys = accepted_keys(section);
            assert!(keys.len() >= 2, "{section}: {keys:?}");
            for key in keys {
                // `key`, or a dotted one with it (`health.path`).
                let named = |cell: &String| {
                    [format!("`{key}`"), format!(".{key}`"), format!("`{key}.")]
                        .iter()
                        .any(|k| cell.contains(k.as_str()))
                };
                assert!(documented.iter().any(named), "{section} key {key:?} is in no README key table");
            }
        }
    }
}
