"""The Rosenbrock function: its gradient, its Hessian (which MATLAB's dlgradient cannot give),
and Newton's method with both.

    python examples/rosenbrock_newton.py
"""
import numpy as np

import functrax as ft
import functrax.numpy as fnp


def rosenbrock(p, a=1.0, b=100.0):
    x, y = p[0], p[1]
    return (a - x) ** 2 + b * (y - x ** 2) ** 2


def main():
    p = fnp.array([-1.2, 1.0])
    g = ft.grad(rosenbrock)(p)
    h = ft.hessian(rosenbrock)(p)
    x, y = -1.2, 1.0
    print("gradient at (-1.2, 1):", np.round(g, 4),
          " exact:", np.round([-2 * (1 - x) - 400 * x * (y - x ** 2), 200 * (y - x ** 2)], 4))
    print("Hessian at (-1.2, 1):\n", np.round(h, 4))

    grad_f, hess_f = ft.jit(ft.grad(rosenbrock)), ft.jit(ft.hessian(rosenbrock))
    for it in range(20):
        step = fnp.linalg.solve(hess_f(p), grad_f(p))
        p = p - step
        print(f"Newton iteration {it:2d}: p = {np.round(p, 6)}  f = {float(rosenbrock(p)):.3e}")
        if float(fnp.linalg.norm(step)) < 1e-10:
            break
    print("minimum found at", np.round(p, 6), "(exact: [1, 1])")


if __name__ == "__main__":
    main()
