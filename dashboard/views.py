from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from queues import broker


@staff_member_required
def index(request: HttpRequest) -> HttpResponse:
    rows = [q.to_dict(c) for q, c in broker.list_queues()]
    return render(request, "dashboard/index.html", {"queues": rows})
