//! Reports as tables: aligned text for a terminal, CSV with a header row, and JSON. The API
//! and `nurture report` print the same tables.

use super::{GroupBy, Roi, RoiRow, money};
use serde_json::{Value, json};

/// Rows of cells under a header; numbers are right-aligned in text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Columns padded to their widest cell, two spaces apart.
    pub fn to_text(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let numeric: Vec<bool> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .all(|r| r[i].is_empty() || r[i] == "-" || r[i].trim_end_matches('%').parse::<f64>().is_ok())
                    && !self.rows.is_empty()
            })
            .collect();
        let line = |cells: &[String]| -> String {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, cell)| {
                    let pad = " ".repeat(widths[i] - cell.chars().count());
                    if numeric[i] {
                        format!("{pad}{cell}")
                    } else {
                        format!("{cell}{pad}")
                    }
                })
                .collect();
            format!("{}\n", padded.join("  ").trim_end())
        };
        let mut text = line(&self.headers);
        for row in &self.rows {
            text.push_str(&line(row));
        }
        text
    }

    /// RFC 4180: a header row, CRLF line ends, cells with commas, quotes or line breaks quoted.
    pub fn to_csv(&self) -> String {
        let cell = |text: &str| {
            if text.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", text.replace('"', "\"\""))
            } else {
                text.to_string()
            }
        };
        let mut csv = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
            csv.push_str(&cells.join(","));
            csv.push_str("\r\n");
        }
        csv
    }
}

/// An amount with its cents (or finer, when a price has more digits).
pub fn amount(micros: i64) -> String {
    let text = format!("{:.6}", money(micros));
    let trimmed = text.trim_end_matches('0');
    match trimmed.split_once('.') {
        Some((_, decimals)) if decimals.len() < 2 => format!("{:.2}", money(micros)),
        _ => trimmed.to_string(),
    }
}

pub fn ratio(value: Option<f64>, digits: usize) -> String {
    value.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}

fn conversions(row: &RoiRow) -> String {
    let text = format!("{:.3}", row.conversions());
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

const METRICS: [&str; 12] = [
    "enrolled",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "conversions",
    "conversion_rate",
    "revenue",
    "cost",
    "roi",
    "cost_per_conversion",
    "unsubscribed",
];

fn group_columns(group_by: GroupBy) -> &'static [&'static str] {
    match group_by {
        GroupBy::Journey => &["journey"],
        GroupBy::Step => &["journey", "step"],
        GroupBy::Channel => &["channel"],
    }
}

fn group_cells(row: &RoiRow, group_by: GroupBy) -> Vec<String> {
    if row.unattributed() {
        let mut cells = vec!["unattributed".to_string()];
        cells.resize(group_columns(group_by).len(), String::new());
        return cells;
    }
    match group_by {
        GroupBy::Journey => vec![row.journey.clone().unwrap_or_default()],
        GroupBy::Step => vec![
            row.journey.clone().unwrap_or_default(),
            step_name(row.step.as_deref().unwrap_or_default()),
        ],
        GroupBy::Channel => vec![row.channel.clone().unwrap_or_default()],
    }
}

/// The journey as a whole (entering it, its fixed cost) has no step of its own.
pub fn step_name(step: &str) -> String {
    if step.is_empty() {
        "(journey)".into()
    } else {
        step.into()
    }
}

/// The ROI report as a table, with a `total` row last.
pub fn roi_table(report: &Roi, group_by: GroupBy) -> Table {
    let mut headers: Vec<&str> = group_columns(group_by).to_vec();
    headers.extend(METRICS);
    let mut table = Table::new(&headers);
    let cells = |row: &RoiRow, group: Vec<String>| {
        let a = &row.activity;
        let mut cells = group;
        cells.extend([
            a.enrolled.to_string(),
            a.sent.to_string(),
            a.delivered.to_string(),
            a.opened.to_string(),
            a.clicked.to_string(),
            conversions(row),
            ratio(row.conversion_rate(), 4),
            amount(row.credit.revenue),
            amount(a.cost),
            ratio(row.roi(), 4),
            ratio(row.cost_per_conversion(), 2),
            a.unsubscribed.to_string(),
        ]);
        cells
    };
    for row in &report.rows {
        table.rows.push(cells(row, group_cells(row, group_by)));
    }
    let mut total = vec!["total".to_string()];
    total.resize(group_columns(group_by).len(), String::new());
    table.rows.push(cells(&report.total, total));
    table
}

fn row_json(row: &RoiRow) -> Value {
    let a = &row.activity;
    json!({
        "enrolled": a.enrolled, "sent": a.sent, "delivered": a.delivered, "opened": a.opened,
        "clicked": a.clicked, "unsubscribed": a.unsubscribed,
        "conversions": row.conversions(), "conversion_rate": row.conversion_rate(),
        "revenue": money(row.credit.revenue), "cost": money(a.cost), "roi": row.roi(),
        "cost_per_conversion": row.cost_per_conversion(),
    })
}

/// The ROI report as JSON: `rows` (the unattributed one with `"unattributed": true`), `total`
/// and `unconverted` revenue by currency.
pub fn roi_json(report: &Roi, group_by: GroupBy) -> Value {
    let rows: Vec<Value> = report
        .rows
        .iter()
        .map(|row| {
            let mut value = row_json(row);
            if row.unattributed() {
                value["unattributed"] = json!(true);
            } else {
                match group_by {
                    GroupBy::Journey => value["journey"] = json!(row.journey),
                    GroupBy::Step => {
                        value["journey"] = json!(row.journey);
                        value["step"] = json!(row.step);
                    }
                    GroupBy::Channel => value["channel"] = json!(row.channel),
                }
            }
            value
        })
        .collect();
    let unconverted: Vec<Value> = report
        .unconverted
        .iter()
        .map(|(currency, credit)| {
            json!({"currency": currency, "conversions": credit.conversions as f64 / 1000.0, "revenue": money(credit.revenue)})
        })
        .collect();
    json!({"rows": rows, "total": row_json(&report.total), "unconverted": unconverted})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_numbers_right_and_csv_quotes_what_it_must() {
        let mut table = Table::new(&["journey", "revenue"]);
        table.rows.push(vec!["welcome".into(), "1.50".into()]);
        table.rows.push(vec!["a, b".into(), "120.00".into()]);
        assert_eq!(
            table.to_text(),
            "journey  revenue\nwelcome     1.50\na, b      120.00\n"
        );
        assert_eq!(table.to_csv(), "journey,revenue\r\nwelcome,1.50\r\n\"a, b\",120.00\r\n");
        assert_eq!(amount(1_500_000), "1.50");
        assert_eq!(amount(800), "0.0008");
        assert_eq!(amount(33_340_000), "33.34");
    }
}
