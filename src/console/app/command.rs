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

    /// Tab on the command line: complete the word under the cursor (the
    /// last) from the commands, or from what the command takes (switch
    /// names, states, sort columns, lanes, pods, run ids). One candidate:
    /// it and a space; several: their common prefix, and the candidates in
    /// the status line.
    pub(super) fn complete(&mut self) {
        let Mode::Command(line) = &self.mode else {
            return;
        };
        let line = line.clone();
        let (done, word) = match line.rfind(' ') {
            Some(i) => (&line[..=i], &line[i + 1..]),
            None => ("", line.as_str()),
        };
        let head = done.split_whitespace().next();
        let options: Vec<String> = match (head, done.split_whitespace().count()) {
            (None, _) => COMMANDS.iter().map(|c| (*c).to_owned()).collect(),
            (Some("set"), 1) => switches::KNOWN.iter().map(|s| s.name.to_owned()).collect(),
            (Some("set"), 2) => vec!["on".into(), "off".into()],
            (Some("state"), 1) => RunState::ALL
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            (Some("sort"), 1) => sort_columns(self.view)
                .iter()
                .map(|(_, n)| (*n).to_owned())
                .collect(),
            (Some("lane"), 1) => {
                let mut l: Vec<String> = self.runs.iter().map(|r| r.lane.clone()).collect();
                l.sort();
                l.dedup();
                l
            }
            (Some("pod" | "owner"), 1) => self.pods.iter().map(|p| p.pod_id.clone()).collect(),
            (Some("kill" | "term" | "terminate" | "pause" | "resume" | "start"), 1) => {
                self.chaos.iter().map(|p| p.id.clone()).collect()
            }
            (Some("run"), 1) => self.runs.iter().map(|r| r.id.clone()).collect(),
            _ => Vec::new(),
        };
        let found: Vec<&String> = options.iter().filter(|o| o.starts_with(word)).collect();
        match found.as_slice() {
            [] => self.error(format!("nothing to complete for {word:?}")),
            [one] => self.mode = Mode::Command(format!("{done}{one} ")),
            many => {
                let common = many.iter().skip(1).fold(many[0].as_str(), |acc, o| {
                    let n = acc
                        .char_indices()
                        .zip(o.chars())
                        .take_while(|((_, a), b)| a == b)
                        .count();
                    &acc[..acc.char_indices().nth(n).map_or(acc.len(), |(i, _)| i)]
                });
                let common = common.to_owned();
                self.mode = Mode::Command(format!("{done}{common}"));
                let shown: Vec<&str> = many.iter().take(8).map(|s| s.as_str()).collect();
                self.info(format!(
                    "{}{}",
                    shown.join("  "),
                    if many.len() > 8 { "  …" } else { "" }
                ));
            }
        }
    }
}

/// The `:` commands Tab completes (aliases left out).
const COMMANDS: &[&str] = &[
    "runs", "run", "pods", "activity", "switches", "events", "chaos", "state", "lane", "pod",
    "owner", "clear", "sort", "set", "kill", "term", "pause", "resume", "start", "freeze", "help",
    "quit",
];
