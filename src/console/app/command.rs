//! The `:` command line: views, `run ID`, the runs filters, `sort`,
//! `set NAME on|off`, the chaos actions, `freeze`, `help` and `quit`.

use super::{App, ChaosOp, Mode, sort_columns};
use crate::console::data::View;
use crate::console::keys::Action;
use crate::engine::run::RunState;
use crate::engine::switches;

impl App {
    pub(super) fn command(&mut self, cmd: &str) {
        let mut words = cmd.split_whitespace();
        let Some(head) = words.next() else { return };
        let args: Vec<&str> = words.collect();
        let arg = args.first().copied();
        match head {
            "runs" | "run" if arg.is_none() => self.show(View::Runs),
            "r" => self.show(View::Runs),
            "pods" | "po" | "p" => self.show(View::Pods),
            "activity" | "act" | "a" => self.show(View::Activity),
            "switches" | "sw" | "s" => self.show(View::Switches),
            "events" | "ev" | "e" => self.show(View::Events),
            "chaos" | "ch" => self.show(View::Chaos),
            "q" | "quit" | "q!" => self.quit = true,
            "help" | "h" => self.mode = Mode::Help,
            "freeze" => self.update(Action::Freeze),
            "run" => {
                // A full id, or a prefix of one (the short form the views
                // show), as every CLI verb takes.
                let want = arg.unwrap_or_default().to_ascii_lowercase();
                let found: Vec<String> = if self.runs.iter().any(|r| r.id == want) {
                    vec![want.clone()]
                } else {
                    self.runs
                        .iter()
                        .filter(|r| r.id.starts_with(&want))
                        .map(|r| r.id.clone())
                        .collect()
                };
                match found.as_slice() {
                    [one] => self.open_run(&one.clone()),
                    [] => self.open_run(&want),
                    many => {
                        let len = crate::console::views::id_abbrev(many.iter().map(String::as_str));
                        let shown: Vec<&str> = many
                            .iter()
                            .take(5)
                            .map(|id| crate::console::views::short(id, len))
                            .collect();
                        self.error(format!(
                            ":run {want}: {} runs start so: {}{}; give more of the id",
                            many.len(),
                            shown.join(", "),
                            if many.len() > 5 { ", …" } else { "" }
                        ));
                    }
                }
            }
            "state" => match arg.map(str::parse::<RunState>) {
                None => self.state_filter = None,
                Some(Ok(s)) => {
                    self.state_filter = Some(s);
                    self.show(View::Runs);
                }
                Some(Err(e)) => self.error(e.to_string()),
            },
            "lane" => {
                self.lane_filter = arg.map(str::to_owned);
                self.show(View::Runs);
            }
            "pod" | "owner" => {
                self.pod_filter = arg.map(str::to_owned);
                self.show(View::Runs);
            }
            "clear" => {
                self.state_filter = None;
                self.lane_filter = None;
                self.pod_filter = None;
                for f in &mut self.filters {
                    f.set(String::new());
                }
            }
            "sort" => {
                let want = arg.unwrap_or_default().to_lowercase();
                match sort_columns(self.view)
                    .iter()
                    .find(|(_, n)| n.starts_with(&want) && !want.is_empty())
                {
                    Some((k, _)) => self.sort_by(*k),
                    None => self.error(format!(":sort {want}: no such column here")),
                }
            }
            "set" => match (arg, args.get(1).and_then(|v| switches::parse_bool(v))) {
                (Some(name), Some(enabled)) => match switches::spec(name) {
                    Ok(s) => self.ask_switch(s.name.to_owned(), enabled),
                    Err(e) => self.error(e.to_string()),
                },
                _ => self.error(":set NAME on|off (then give a reason)"),
            },
            "kill" | "term" | "terminate" | "pause" | "resume" | "start" => {
                let op = match head {
                    "kill" => ChaosOp::Kill,
                    "term" | "terminate" => ChaosOp::Terminate,
                    "pause" => ChaosOp::Pause,
                    "resume" => ChaosOp::Resume,
                    _ => ChaosOp::Start,
                };
                match arg {
                    Some(pod) => self.ask_chaos(op, pod.to_owned()),
                    None => self.error(format!(":{head} POD")),
                }
            }
            other => self.error(format!(
                "unknown command :{other} (:help lists the commands)"
            )),
        }
    }
}
