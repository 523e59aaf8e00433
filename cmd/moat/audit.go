package main

import "fmt"

func cmdAudit(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}

func cmdLockdown(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}

func cmdMilter(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}
