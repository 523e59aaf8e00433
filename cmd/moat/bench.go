package main

import "fmt"

func cmdBench(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}
