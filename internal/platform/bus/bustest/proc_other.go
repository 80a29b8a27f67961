//go:build !linux

package bustest

import (
	"os"
	"os/exec"
)

// terminate stops the server; elsewhere than Linux it is not asked nicely.
var terminate os.Signal = os.Kill

// dieWithParent has no portable form: run StopExternal from TestMain.
func dieWithParent(*exec.Cmd) {}
