//! What an operator may ask of a running VRRP instance (`vipd vrrp
//! step-down|resume|priority`), and the handle the control socket asks it
//! through: each driver answers the commands for its instances.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use super::driver::InstanceSide;

use super::notify::Hooks;
use super::router::InstanceSpec;
use crate::net::addr::VirtualIp;

/// An instance's settings as a reload found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconfigured {
    /// What the router runs.
    pub spec: InstanceSpec,
    /// The VIPs with their prefixes.
    pub vips: Vec<VirtualIp>,
    /// Its notify hooks.
    pub notify: Hooks,
}

/// One change to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// A planned hand-over: priority 0, the VIPs kept until the new master
    /// advertises; then backup, without preemption until [`Ask::Resume`].
    StepDown,
    /// Preempt again as configured.
    Resume,
    /// Advertise this priority (1..=254) whatever the trackers say; `None`
    /// goes back to the configured and tracked one.
    Priority(Option<u8>),
    /// A reload: these settings from now on, without a transition.
    Reconfigure(Box<Reconfigured>),
    /// A reload removes the instance: it stops as on a planned stop
    /// (priority 0 from a master, its VIPs kept until the new master
    /// advertises), then leaves.
    Remove,
}

/// A command on its way to the driver of instance `vrid`.
#[derive(Debug)]
pub struct Command {
    /// The instance's VRID (unique within its driver).
    pub vrid: u8,
    /// What to change.
    pub ask: Ask,
    /// What happened, in a sentence, or why not.
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// What a driver is told.
#[derive(Debug)]
pub enum ToDriver {
    /// A change to one of its instances.
    Command(Command),
    /// A reload adds an instance to it; the answer says what happened.
    Add(Box<InstanceSide>, oneshot::Sender<Result<String, String>>),
}

/// A driver's inbox.
pub type DriverInbox = mpsc::UnboundedSender<ToDriver>;

/// Where each instance's commands go, by instance name. Clones share the
/// map: a reload's additions and removals are seen by every holder.
#[derive(Debug, Clone, Default)]
pub struct Operator {
    by_name: Arc<RwLock<HashMap<String, (u8, DriverInbox)>>>,
}

impl Operator {
    /// Commands for instance `name` (VRID `vrid`) go to `driver`.
    pub fn add(&self, name: String, vrid: u8, driver: DriverInbox) {
        self.by_name.write().unwrap_or_else(|p| p.into_inner()).insert(name, (vrid, driver));
    }

    /// Instance `name` is gone (a reload removed it).
    pub fn forget(&self, name: &str) {
        self.by_name.write().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    /// Asks instance `name` for `ask`; the answer says what happened.
    pub async fn ask(&self, name: &str, ask: Ask) -> Result<String, String> {
        let (vrid, driver) = self
            .by_name
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no vrrp instance {name:?}"))?;
        let (reply, answer) = oneshot::channel();
        driver
            .send(ToDriver::Command(Command { vrid, ask, reply }))
            .map_err(|_| "the VRRP thread is gone".to_string())?;
        answer.await.map_err(|_| "the VRRP thread did not answer".to_string())?
    }
}
