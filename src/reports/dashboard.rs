//! The dashboard as one server-rendered HTML page with inline SVG: no script, no external
//! file, so it works offline and needs no build toolchain. **Pure**: reports in, HTML out.
//! The tables are the very `Table`s the API serves as CSV, so the page and the API agree.

use super::render::Table;
use handlebars::html_escape;
use std::fmt::Write;

/// One step of a journey's state machine with the contacts that reached it.
pub struct StepView {
    pub id: String,
    /// `email hello`, `wait 1d`: what the step does.
    pub does: String,
    pub reached: i64,
    /// `(label, where it goes)` for each way out of the step.
    pub next: Vec<(String, String)>,
}

/// A journey's running version, drawn as its steps with counts.
pub struct JourneyView {
    pub id: String,
    pub name: String,
    pub enrolled: i64,
    pub goals: i64,
    pub steps: Vec<StepView>,
}

/// Everything on the page.
pub struct Page<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub model: &'a str,
    pub currency: &'a str,
    pub kpis: &'a Table,
    /// Per period of the range: leads, customers, revenue, cost, ROI.
    pub trend: &'a Table,
    pub by_journey: &'a Table,
    pub by_channel: &'a Table,
    pub journeys: &'a [JourneyView],
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}\
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .5rem}\
td{text-align:right}td:first-child,th{text-align:left}.step{margin:.25rem 0}.step small{color:#666}\
.legend rect{stroke:none}form.range{margin-bottom:1rem}";

const MODELS: [&str; 5] = ["first_touch", "last_touch", "linear", "time_decay", "position_based"];

/// A table with `data-table` naming it, for people and for tests.
pub fn table_html(name: &str, table: &Table) -> String {
    let mut out = format!("<table data-table=\"{}\"><thead><tr>", html_escape(name));
    for header in &table.headers {
        let _ = write!(out, "<th>{}</th>", html_escape(header));
    }
    out.push_str("</tr></thead><tbody>");
    for row in &table.rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", html_escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// Revenue and cost side by side for each row of an ROI table (the `total` row left out, it
/// would dwarf the others), as horizontal bars.
pub fn roi_chart(table: &Table) -> String {
    let column = |name: &str| table.headers.iter().position(|h| h == name);
    let (Some(revenue), Some(cost)) = (column("revenue"), column("cost")) else {
        return String::new();
    };
    let number = |cell: &str| cell.parse::<f64>().unwrap_or(0.0);
    let bars: Vec<(&str, f64, f64)> = table
        .rows
        .iter()
        .filter(|row| row[0] != "total")
        .map(|row| (row[0].as_str(), number(&row[revenue]), number(&row[cost])))
        .collect();
    let largest = bars.iter().map(|(_, r, c)| r.max(*c)).fold(0.0_f64, f64::max).max(1.0);
    let (label_width, bar_width, row_height) = (140.0, 360.0, 34.0);
    let height = bars.len() as f64 * row_height + 24.0;
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"revenue and cost\" width=\"{}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\">",
        label_width + bar_width + 90.0
    );
    for (i, (label, revenue, cost)) in bars.iter().enumerate() {
        let y = i as f64 * row_height;
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text>",
            y + 14.0,
            html_escape(label)
        );
        for (offset, value, colour) in [(0.0, revenue, "#2a7"), (14.0, cost, "#c54")] {
            let width = value / largest * bar_width;
            let _ = write!(
                svg,
                "<rect x=\"{label_width}\" y=\"{}\" width=\"{width:.1}\" height=\"12\" fill=\"{colour}\"/>\
                 <text x=\"{:.1}\" y=\"{}\" font-size=\"10\">{value:.2}</text>",
                y + offset,
                label_width + width + 4.0,
                y + offset + 10.0
            );
        }
    }
    let legend = height - 8.0;
    let _ = write!(
        svg,
        "<g class=\"legend\" font-size=\"11\"><rect x=\"{label_width}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"#2a7\"/>\
         <text x=\"{}\" y=\"{legend}\">revenue</text><rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"#c54\"/>\
         <text x=\"{}\" y=\"{legend}\">cost</text></g></svg>",
        legend - 9.0,
        label_width + 14.0,
        label_width + 80.0,
        legend - 9.0,
        label_width + 94.0
    );
    svg
}

/// A journey's steps in order, each with a bar as long as its share of the contacts who
/// entered, its count, and where it leads.
pub fn journey_html(journey: &JourneyView) -> String {
    let id = html_escape(&journey.id);
    let mut out = format!(
        "<section data-journey=\"{id}\"><h3>{} <small>({id})</small></h3>\
         <p><span data-enrolled>{}</span> entered, <span data-goals>{}</span> reached the goal</p>",
        html_escape(&journey.name),
        journey.enrolled,
        journey.goals
    );
    let widest = journey.enrolled.max(1) as f64;
    for step in &journey.steps {
        let width = step.reached as f64 / widest * 200.0;
        let next: Vec<String> = step
            .next
            .iter()
            .map(|(label, target)| format!("{} &rarr; {}", html_escape(label), html_escape(target)))
            .collect();
        let _ = write!(
            out,
            "<div class=\"step\" data-step=\"{}\"><svg width=\"204\" height=\"12\" xmlns=\"http://www.w3.org/2000/svg\">\
             <rect width=\"204\" height=\"12\" fill=\"#eee\"/><rect width=\"{width:.1}\" height=\"12\" fill=\"#37a\"/></svg> \
             <b data-reached>{}</b> <strong>{}</strong>: {} <small>{}</small></div>",
            html_escape(&step.id),
            step.reached,
            html_escape(&step.id),
            html_escape(&step.does),
            next.join("; ")
        );
    }
    out.push_str("</section>");
    out
}

/// The whole dashboard.
pub fn page(page: &Page) -> String {
    let mut out = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>nurture dashboard</title>\
         <style>{STYLE}</style></head><body><h1>nurture dashboard</h1>\
         <form class=\"range\" method=\"get\" action=\"/dashboard\">From <input type=\"date\" name=\"from\" value=\"{}\"> \
         to <input type=\"date\" name=\"to\" value=\"{}\"> credit by <select name=\"model\">",
        html_escape(page.from),
        html_escape(page.to)
    );
    for model in MODELS {
        let selected = if model == page.model { " selected" } else { "" };
        let _ = write!(
            out,
            "<option value=\"{model}\"{selected}>{}</option>",
            model.replace('_', " ")
        );
    }
    out.push_str("</select> <button>Show</button></form>");
    let _ = write!(
        out,
        "<p>Money in {}.</p><h2>Sales KPIs</h2>{}<h2>Over time</h2>{}{}\
         <h2>Return on investment by journey</h2>{}{}\
         <h2>Return on investment by channel</h2>{}{}<h2>Journeys: contacts at each step</h2>",
        html_escape(page.currency),
        table_html("kpis", page.kpis),
        roi_chart(page.trend),
        table_html("trend", page.trend),
        roi_chart(page.by_journey),
        table_html("roi-journey", page.by_journey),
        roi_chart(page.by_channel),
        table_html("roi-channel", page.by_channel)
    );
    for journey in page.journeys {
        out.push_str(&journey_html(journey));
    }
    out.push_str("</body></html>");
    out
}

/// The form that asks for the admin token once.
pub fn login(problem: Option<&str>) -> String {
    let problem = problem
        .map(|p| format!("<p role=\"alert\">{}</p>", html_escape(p)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>nurture: sign in</title>\
         <style>{STYLE}</style></head><body><h1>nurture dashboard</h1>{problem}\
         <form method=\"post\" action=\"/dashboard/login\"><label>Admin token \
         <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required></label> \
         <button type=\"submit\">Sign in</button></form></body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_escaped_and_the_chart_leaves_out_the_total() {
        let mut table = Table::new(&["journey", "revenue", "cost"]);
        table.rows.push(vec!["<b>&".into(), "10.00".into(), "5.00".into()]);
        table.rows.push(vec!["total".into(), "10.00".into(), "5.00".into()]);
        let html = table_html("roi", &table);
        assert!(html.contains("<td>&lt;b&gt;&amp;</td>"), "{html}");
        let chart = roi_chart(&table);
        assert_eq!(
            chart.matches("fill=\"#2a7\"").count(),
            2,
            "one bar and the legend: {chart}"
        );
        assert!(!chart.contains(">total<"));
    }
}
