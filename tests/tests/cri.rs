//! The kubelet path end to end: pods asked of containerd's CRI plugin on two lab nodes, with
//! wren installed by `deploy/cni/install.sh`.

use std::time::Duration;

use wren_tests::cri::{self, CriLab, PodSpec};
use wren_tests::lab;

#[test]
fn pods_through_containerd() {
    if !cri::require_cri() {
        return;
    }
    let rig = CriLab::up(&lab::test_lab_name('c'), 2).expect("rig up");
    let n1 = rig.runtimes[0].client().unwrap();
    let n2 = rig.runtimes[1].client().unwrap();
    let a = n1
        .run(&PodSpec::new("default", "a"))
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.runtimes[0].log()));
    let b = n2.run(&PodSpec::new("default", "b")).unwrap();
    let na = n1.network(&a).unwrap();
    let nb = n2.network(&b).unwrap();
    eprintln!("{na:?} {nb:?}");
    std::thread::sleep(Duration::from_secs(1));
}
