package bustest

import (
	"os"
	"os/exec"
	"syscall"
)

// terminate asks the server to shut down cleanly.
var terminate os.Signal = syscall.SIGTERM

// dieWithParent makes the kernel kill cmd when the test binary dies without
// running StopExternal (a panic or a -timeout).
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
